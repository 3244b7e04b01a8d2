"""The orchestrator's core when something does not answer: TTS and brain watchdogs, silent
replies, the idle caller, a lost STT worker, and the end of the call. Event sequences,
no bus."""

from __future__ import annotations

from proto import subjects
from proto.messages import (
    BrainTurn,
    CallStopped,
    Hangup,
    ReplyDone,
    ReplyError,
    SttError,
    Synthesize,
    Transfer,
    TurnCancel,
)
from services.orchestrator.call import CallLimits
from services.orchestrator.effects import CancelTimer, Publish, ReassignStt, SaveRecord, StartTimer
from services.orchestrator.events import Greet, SttLost, SttReassigned
from services.orchestrator.states import CallState
from services.orchestrator.timers import TimerKind
from tests.unit.orchestrator_driver import CALL_ID, GREETING, Driver
from voxline.agents.turn_options import TurnOptions

APOLOGY = "Sorry, I'm having trouble right now. Could you say that again?"


def test_tts_watchdog_retries_with_attempt_1_then_skips_with_attempt_2_and_ignores_stale_results() -> None:
    d = Driver(limits=CallLimits(tts_timeout_s=5.0))
    d.send(Greet(call_start_us=d.now_us))
    greeting = d.turn
    first = d.pending(TimerKind.TTS, greeting.turn_id, 0)
    assert first is not None and first.deadline_us == d.now_us + 5_000_000

    d.fire(TimerKind.TTS, greeting.turn_id, 0)  # the worker died with sentence 0
    retry = d.published(Synthesize)[-1]
    assert (retry.seq, retry.attempt, retry.text, retry.last) == (0, 1, GREETING, False)
    d.synthesized(greeting.turn_id, 0, audio_ms=900.0, attempt=0)  # the dead attempt, late
    d.tts_error(greeting.turn_id, 0, attempt=0)
    assert d.pending(TimerKind.TTS, greeting.turn_id, 0), "a stale result stopped the watchdog on the retry"
    assert 0 not in greeting.audio_ms and 0 not in greeting.failed

    d.fire(TimerKind.TTS, greeting.turn_id, 0)  # the retry is lost too
    skip = d.published(Synthesize)[-1]
    assert (skip.seq, skip.attempt, skip.text, skip.last) == (0, 2, "", False)
    assert not d.pending(TimerKind.TTS, greeting.turn_id, 0)
    assert 0 in greeting.failed  # nothing of it was heard
    d.synthesized(greeting.turn_id, 0, audio_ms=900.0, attempt=1)  # the retry, after the skip
    assert 0 not in greeting.audio_ms

    # The closing marker of the turn goes the same way, keeping its `last` flag.
    d.fire(TimerKind.TTS, greeting.turn_id, 1)
    d.fire(TimerKind.TTS, greeting.turn_id, 1)
    closing = [s for s in d.published(Synthesize) if s.seq == 1]
    assert [(s.attempt, s.text, s.last) for s in closing] == [(0, "", True), (1, "", True), (2, "", True)]


def test_a_result_of_the_newest_attempt_stops_the_watchdog() -> None:
    d = Driver()
    d.send(Greet(call_start_us=d.now_us))
    greeting = d.turn
    d.fire(TimerKind.TTS, greeting.turn_id, 0)
    effects = d.synthesized(greeting.turn_id, 0, audio_ms=900.0, attempt=1)
    assert [e.timer.kind for e in effects if isinstance(e, CancelTimer)] == [TimerKind.TTS]
    assert greeting.audio_ms[0] == 900.0
    assert d.synthesized(greeting.turn_id, 1, audio_ms=0.0)  # and attempt 0 of the marker as usual
    assert not d.pending(TimerKind.TTS, greeting.turn_id, 1)


LONG_SENTENCE = "You said: " + "tell me about every opening hour of every branch you have " * 3 + "."


def test_a_tts_worker_dying_mid_sentence_is_noticed_one_progress_timeout_after_its_last_chunk() -> None:
    """The watchdog follows the sentence's progress: a long sentence that keeps flowing is
    never taken for dead (before: retried `tts_timeout_s` after its request, flowing or
    not), and a worker that stops mid-sentence is replaced one progress timeout after its
    last report, by attempt 1 of the same sentence, and the reply goes on."""
    d = Driver(limits=CallLimits(tts_timeout_s=5.0, tts_progress_timeout_s=1.0))
    d.greet()
    d.says("What are your opening hours?")
    d.fire(TimerKind.END_OF_TURN)
    turn = d.turn
    d.sentence(turn.turn_id, 0, LONG_SENTENCE)
    d.done(turn.turn_id, 1)
    watchdog = d.pending(TimerKind.TTS, turn.turn_id, 0)
    assert watchdog is not None and watchdog.deadline_us == d.now_us + 5_000_000  # first audio: the provider's TTFB

    for chunks in range(1, 20):  # 9.5 s of flowing audio reports, well past the 5 s
        d.wait(500)
        d.progress(turn.turn_id, 0, chunks)
        watchdog = d.pending(TimerKind.TTS, turn.turn_id, 0)
        assert watchdog is not None and watchdog.deadline_us == d.now_us + 1_000_000, chunks
    assert [s.attempt for s in d.published(Synthesize) if s.turn_id == turn.turn_id and s.seq == 0] == [0]
    last_report_us = d.now_us

    d.fire(TimerKind.TTS, turn.turn_id, 0)  # the worker was killed: no report after the last
    assert d.now_us == last_report_us + 1_000_000
    retry = d.published(Synthesize)[-1]
    assert (retry.seq, retry.attempt, retry.text, retry.last) == (0, 1, LONG_SENTENCE, False)
    retry_watchdog = d.pending(TimerKind.TTS, turn.turn_id, 0)
    assert retry_watchdog is not None and retry_watchdog.deadline_us == d.now_us + 5_000_000
    d.wait(100)
    d.progress(turn.turn_id, 0, 20, attempt=0)  # the dead attempt's last words, late: not the retry's
    assert d.pending(TimerKind.TTS, turn.turn_id, 0) == retry_watchdog
    d.progress(turn.turn_id, 0, 1, attempt=1)  # the retry flows
    retry_watchdog = d.pending(TimerKind.TTS, turn.turn_id, 0)
    assert retry_watchdog is not None and retry_watchdog.deadline_us == d.now_us + 1_000_000
    d.synthesized(turn.turn_id, 0, audio_ms=11_000.0, attempt=1)
    d.progress(turn.turn_id, 0, 2, attempt=1)  # a report overtaken by the result starts nothing again
    assert not d.pending(TimerKind.TTS, turn.turn_id, 0)
    assert turn.audio_ms[0] == 11_000.0 and not turn.failed and turn.active
    d.synthesized(turn.turn_id, 1, audio_ms=0.0)
    d.audio_sent(turn.turn_id)
    d.mark(turn.turn_id, 0, 11_000, sentence_end=True)
    d.mark(turn.turn_id, 1, 0, sentence_end=True, turn_end=True)
    assert d.call.record.turns[-1].heard_text == LONG_SENTENCE
    assert d.call.state is CallState.LISTENING


def test_a_retry_that_stops_mid_sentence_too_is_skipped_and_the_reply_goes_on() -> None:
    d = Driver(limits=CallLimits(tts_timeout_s=5.0, tts_progress_timeout_s=1.0))
    d.send(Greet(call_start_us=d.now_us))
    greeting = d.turn
    d.progress(greeting.turn_id, 0, 1)
    d.fire(TimerKind.TTS, greeting.turn_id, 0)  # attempt 0 stopped mid-sentence
    d.progress(greeting.turn_id, 0, 1, attempt=1)
    d.fire(TimerKind.TTS, greeting.turn_id, 0)  # and so did attempt 1
    skip = d.published(Synthesize)[-1]
    assert (skip.seq, skip.attempt, skip.text) == (0, 2, "")
    assert 0 in greeting.failed and not d.pending(TimerKind.TTS, greeting.turn_id, 0)
    d.progress(greeting.turn_id, 0, 2, attempt=1)  # the skipped retry, late
    assert not d.pending(TimerKind.TTS, greeting.turn_id, 0)
    assert d.pending(TimerKind.TTS, greeting.turn_id, 1), "the closing marker is still watched: the reply goes on"


def test_progress_of_a_cancelled_turn_starts_no_watchdog() -> None:
    d = Driver(limits=CallLimits(tts_progress_timeout_s=1.0))
    d.greet()
    d.says("What are your opening hours?")
    d.fire(TimerKind.END_OF_TURN)
    turn = d.turn
    d.sentence(turn.turn_id, 0, LONG_SENTENCE)
    d.audio_sent(turn.turn_id)
    d.says("Actually, never mind.")  # a barge-in: the turn is cancelled
    assert turn.cancelled and not d.pending(TimerKind.TTS, turn.turn_id, 0)
    d.progress(turn.turn_id, 0, 3)
    assert not d.pending(TimerKind.TTS, turn.turn_id, 0)


def test_a_silent_brain_is_asked_again_once_then_the_agent_apologises() -> None:
    d = Driver(limits=CallLimits(brain_timeout_s=2.0))
    d.greet()
    d.says("What are your opening hours?")
    d.fire(TimerKind.END_OF_TURN)
    turn = d.turn
    first = d.published(BrainTurn)[-1]
    assert first.attempt == 0 and d.pending(TimerKind.BRAIN, turn.turn_id)

    d.fire(TimerKind.BRAIN, turn.turn_id)  # the worker that took it died: no heartbeat
    again = d.published(BrainTurn)[-1]
    assert (again.turn_id, again.attempt, again.user_text) == (turn.turn_id, 1, first.user_text)
    assert turn.kind == "reply" and not [s for s in d.published(Synthesize) if s.turn_id == turn.turn_id]
    d.sentence(turn.turn_id, 0, "From the dead worker.", attempt=0)  # a late reply of the first ask
    d.brain_progress(turn.turn_id, attempt=0)
    assert not [s for s in d.published(Synthesize) if s.turn_id == turn.turn_id]

    d.fire(TimerKind.BRAIN, turn.turn_id)  # the second worker is silent too
    assert turn.kind == "apology"
    assert [s.text for s in d.published(Synthesize) if s.turn_id == turn.turn_id] == [APOLOGY, ""]
    assert len(d.published(BrainTurn)) == 2, "asked a third time"
    d.sentence(turn.turn_id, 0, "Too late.", attempt=1)  # the brain wakes up: the turn is closed
    assert len([s for s in d.published(Synthesize) if s.turn_id == turn.turn_id]) == 2


def test_the_retried_reply_is_spoken_and_the_first_workers_end_is_ignored() -> None:
    d = Driver(limits=CallLimits(brain_timeout_s=2.0))
    d.greet()
    d.says("Where can I park?")
    d.fire(TimerKind.END_OF_TURN)
    turn = d.turn
    d.fire(TimerKind.BRAIN, turn.turn_id)
    d.brain_progress(turn.turn_id, attempt=1)
    d.sentence(turn.turn_id, 0, "Behind the building.", attempt=1)
    d.send(ReplyError(call_id=CALL_ID, turn_id=turn.turn_id, message="worker stopped", attempt=0))
    d.send(ReplyDone(call_id=CALL_ID, turn_id=turn.turn_id, sentences=3, at_us=d.now_us, attempt=0))
    assert turn.kind == "reply" and not turn.brain_done
    d.send(ReplyDone(call_id=CALL_ID, turn_id=turn.turn_id, sentences=1, at_us=d.now_us, attempt=1))
    assert turn.brain_done
    assert [s.text for s in d.published(Synthesize) if s.turn_id == turn.turn_id] == ["Behind the building.", ""]


def test_a_slow_model_is_not_silence_the_heartbeat_keeps_the_turn() -> None:
    d = Driver(limits=CallLimits(brain_timeout_s=2.0))
    d.greet()
    d.says("Do you take my insurance?")
    d.fire(TimerKind.END_OF_TURN)
    turn = d.turn
    for _ in range(10):  # 5 s of a model thinking, a heartbeat every 0.5 s
        d.wait(500)
        d.brain_progress(turn.turn_id)
        timer = d.pending(TimerKind.BRAIN, turn.turn_id)
        assert timer is not None and timer.deadline_us == d.now_us + 2_000_000
    assert len(d.published(BrainTurn)) == 1
    d.sentence(turn.turn_id, 0, "We do.")
    assert [s.text for s in d.published(Synthesize) if s.turn_id == turn.turn_id] == ["We do."]


def test_silence_after_some_sentences_apologises_without_asking_again() -> None:
    d = Driver(limits=CallLimits(brain_timeout_s=2.0))
    d.greet()
    d.says("How much is a cleaning?")
    d.fire(TimerKind.END_OF_TURN)
    turn = d.turn
    d.sentence(turn.turn_id, 0, "A cleaning is eighty dollars.")
    d.fire(TimerKind.BRAIN, turn.turn_id)  # died mid-reply: a second answer would repeat the first part
    assert len(d.published(BrainTurn)) == 1
    texts = [s.text for s in d.published(Synthesize) if s.turn_id == turn.turn_id]
    assert texts == ["A cleaning is eighty dollars.", APOLOGY, ""]
    assert turn.kind == "reply"


def test_brain_timeout_on_a_preemptive_reply_waits_for_the_end_of_turn() -> None:
    d = Driver(limits=CallLimits(brain_timeout_s=0.1))
    d.greet()
    d.speech_started()
    d.interim_pause("what are your opening hours")
    turn = d.turn
    d.fire(TimerKind.BRAIN, turn.turn_id)  # asked again
    assert d.published(BrainTurn)[-1].attempt == 1
    d.fire(TimerKind.BRAIN, turn.turn_id)  # silent again
    assert not [s for s in d.published(Synthesize) if s.turn_id == turn.turn_id]
    d.speech_ended()
    d.final("What are your opening hours?")
    d.fire(TimerKind.END_OF_TURN)
    assert [s.text for s in d.published(Synthesize) if s.turn_id == turn.turn_id] == [APOLOGY, ""]


def test_two_replies_in_a_row_tts_could_not_speak_hang_up() -> None:
    d = Driver()
    d.send(Greet(call_start_us=d.now_us))
    greeting = d.turn
    d.tts_error(greeting.turn_id, 0)
    d.mark(greeting.turn_id, 1, 0, sentence_end=True, turn_end=True)
    assert d.call.silent_turns == 1 and not d.published(Hangup)
    assert d.call.record.turns[0].heard_text == ""
    reply = d.answered("hello?", ["Hello there."])
    d.tts_error(reply.turn_id, 0)
    d.mark(reply.turn_id, 1, 0, sentence_end=True, turn_end=True)
    [hangup] = d.published(Hangup)
    assert hangup.reason == "text to speech unavailable"


def test_a_spoken_reply_between_failures_resets_the_count() -> None:
    d = Driver()
    d.send(Greet(call_start_us=d.now_us))
    d.tts_error(d.turn.turn_id, 0)
    d.mark(d.turn.turn_id, 1, 0, sentence_end=True, turn_end=True)
    d.play(d.answered("hello?", ["Hello there."]))
    assert d.call.silent_turns == 0 and not d.published(Hangup)


def test_a_silent_caller_is_reprompted_then_told_goodbye_and_hung_up_on() -> None:
    options = TurnOptions(idle_reprompt_s=8.0, idle_hangup_s=20.0)
    d = Driver(options)
    d.greet()
    idle = d.pending(TimerKind.IDLE)
    assert idle is not None and idle.deadline_us == d.now_us + 8_000_000
    d.fire(TimerKind.IDLE)
    reprompt = d.turn
    assert reprompt.kind == "reprompt" and reprompt.sentences[0] == options.reprompt
    d.play(reprompt)
    idle = d.pending(TimerKind.IDLE)
    assert idle is not None and idle.deadline_us == d.now_us + 12_000_000  # 20 s in all
    d.fire(TimerKind.IDLE)
    goodbye = d.turn
    assert goodbye.kind == "goodbye" and not d.published(Hangup)
    d.play(goodbye)
    assert [h.reason for h in d.published(Hangup)] == ["agent ended the call"]
    assert [t.kind for t in d.call.record.turns] == ["greeting", "reprompt", "goodbye"]


def test_the_caller_speaking_after_a_reprompt_starts_the_idle_count_again() -> None:
    d = Driver()
    d.greet()
    d.fire(TimerKind.IDLE)
    d.play(d.turn)
    d.play(d.answered("yes, I'm here", ["Good."]))
    d.fire(TimerKind.IDLE)
    assert d.turn.kind == "reprompt"


def test_a_failed_stt_worker_is_replaced_or_the_call_ends_politely() -> None:
    d = Driver()
    d.greet()
    assert d.send(SttError(call_id=CALL_ID, message="deepgram closed")) == [ReassignStt()]
    assert d.send(SttReassigned(ok=True)) == []
    d.send(SttError(call_id=CALL_ID, message="deepgram closed"))
    d.send(SttReassigned(ok=False))
    assert d.turn.kind == "failure" and d.turn.action == "hangup"
    d.play(d.turn)
    assert [h.reason for h in d.published(Hangup)] == ["agent ended the call"]


def test_a_dead_stt_worker_during_a_reply_cancels_it_and_says_goodbye() -> None:
    d = Driver()
    d.greet()
    reply = d.answered("hello", ["Hello there."])
    d.send(SttLost(reason="no speech-to-text worker available"))
    assert [(c.turn_id, c.reason) for c in d.published(TurnCancel)] == [
        (reply.turn_id, "no speech-to-text worker available")
    ]
    assert d.turn.kind == "failure" and d.call.state is CallState.THINKING


def test_transfer_after_the_reply_was_heard() -> None:
    d = Driver()
    d.greet()
    d.says("I want to talk to a person")
    d.fire(TimerKind.END_OF_TURN)
    turn = d.turn
    d.sentence(turn.turn_id, 0, "Transferring you now.")
    d.done(turn.turn_id, 1, action="transfer", action_arg="+15005550006")
    assert not d.published(Transfer)
    d.play(turn)
    [transfer] = d.published(Transfer)
    assert transfer.to == "+15005550006"


def test_the_end_of_the_call_stops_every_timer_and_writes_the_final_record() -> None:
    d = Driver()
    d.greet()
    d.says("hello")
    d.fire(TimerKind.END_OF_TURN)
    reply = d.turn
    d.sentence(reply.turn_id, 0, "Hello there.")  # on its way to TTS, watched
    pending = {p.timer for p in d.call.timers}
    assert {t.kind for t in pending} == {TimerKind.TTS, TimerKind.BRAIN, TimerKind.MAX_CALL}
    effects = d.send(CallStopped(call_id=CALL_ID, reason="caller hung up", at_us=d.now_us))
    assert {e.timer for e in effects if isinstance(e, CancelTimer)} == pending and not d.call.timers
    assert d.call.state is CallState.ENDED
    record = d.call.record
    assert (record.status, record.end_reason, record.ended_at_us) == ("ended", "caller hung up", d.now_us)
    assert record.turns[-1].turn_id == reply.turn_id and record.turns[-1].cancel_reason == "call_ended"
    assert effects[-1] == SaveRecord(record)
    assert d.says("hello again") == []  # an ended call handles nothing


def test_timers_are_started_with_deadlines_from_the_event_time() -> None:
    d = Driver(limits=CallLimits(brain_timeout_s=8.0))
    d.greet()
    d.dtmf("5")
    [request] = d.published(BrainTurn)
    [brain] = [e for e in d.effects if isinstance(e, StartTimer) and e.timer.kind is TimerKind.BRAIN]
    assert (brain.timer.turn_id, brain.deadline_us) == (request.turn_id, d.now_us + 8_000_000)
    assert request.requested_at_us == d.now_us
    [publish] = [e for e in d.effects if isinstance(e, Publish) and e.subject == subjects.BRAIN_TURN]
    assert publish.turn_id == request.turn_id


def test_the_maximum_call_length_says_goodbye_over_the_reply_and_hangs_up_once_heard() -> None:
    d = Driver()
    d.greet()
    limit = d.pending(TimerKind.MAX_CALL)
    assert limit is not None and limit.deadline_us == d.call.record.started_at_us + int(d.call.agent.max_call_s * 1e6)
    reply = d.answered("tell me everything", ["It all began long ago."])
    effects = d.fire(TimerKind.MAX_CALL)
    assert [(c.turn_id, c.reason) for c in d.published(TurnCancel, effects)] == [(reply.turn_id, "max_call_length")]
    goodbye = d.turn
    assert goodbye.kind == "goodbye" and goodbye.sentences[0] == d.call.agent.time_limit_message
    assert d.pending(TimerKind.MAX_CALL, seq=1)  # the goodbye's grace
    d.play(goodbye)
    [hangup] = d.published(Hangup)
    assert hangup.reason == "maximum call length reached"


def test_a_time_limit_goodbye_nobody_hears_still_ends_the_call() -> None:
    d = Driver()
    d.greet()
    d.fire(TimerKind.MAX_CALL)  # TTS is down: no mark of the goodbye ever comes back
    assert not d.published(Hangup)
    d.fire(TimerKind.MAX_CALL, seq=1)
    [hangup] = d.published(Hangup)
    assert hangup.reason == "maximum call length reached"


def test_a_brain_that_dies_after_its_first_sentence_gets_the_turn_an_apology() -> None:
    d = Driver()
    d.greet()
    d.says("tell me about your prices")
    d.fire(TimerKind.END_OF_TURN)
    turn = d.turn
    d.sentence(turn.turn_id, 0, "Our prices are simple.")  # then the brain worker dies
    assert d.pending(TimerKind.BRAIN, turn.turn_id)  # still watched: it never said it was done
    d.fire(TimerKind.BRAIN, turn.turn_id)
    spoken = [s.text for s in d.published(Synthesize) if s.turn_id == turn.turn_id]
    assert spoken == ["Our prices are simple.", d.call.agent.apology, ""]
    assert turn.closed and turn.kind == "reply"
