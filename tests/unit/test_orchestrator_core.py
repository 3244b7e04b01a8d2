"""The orchestrator's core, driven by event sequences without a bus: end of turn,
preemptive replies, barge-in, backchannels and what the caller heard."""

from __future__ import annotations

import msgspec
import pytest

from proto.messages import BrainTurn, PlaybackPause, PlaybackResume, SpeechStarted, Synthesize, TurnCancel
from services.orchestrator.call import Call
from services.orchestrator.core import step
from services.orchestrator.end_of_turn import is_backchannel
from services.orchestrator.events import TimerFired
from services.orchestrator.states import TRANSITIONS, CallState, IllegalTransition, transition
from services.orchestrator.timers import TimerKind
from tests.unit.orchestrator_driver import CALL_ID, GREETING, Driver
from voxline.agents.turn_options import TurnOptions

QUESTION = "What are your opening hours?"
REPLY = ["We open at nine and close at six.", "On Saturdays we close at noon."]
# Whisper's spelling of a caller's "uh-huh": a sound, not a word.
BACKCHANNEL = "Uh-uh."


def test_greeting_then_a_preemptive_reply_committed_on_the_same_words() -> None:
    d = Driver()
    greeting = d.greet()
    assert [s.text for s in d.published(Synthesize)] == [GREETING, ""]
    assert d.published(Synthesize)[-1].last and d.published(Synthesize)[0].greeting
    assert d.call.state is CallState.LISTENING and d.pending(TimerKind.IDLE)
    assert [t.kind for t in d.call.record.turns] == ["greeting"]
    assert d.call.record.turns[0].heard_text == GREETING

    d.speech_started()
    assert d.call.state is CallState.CALLER_SPEAKING and not d.pending(TimerKind.IDLE)
    d.wait(900)
    d.interim_pause("what are your opening hours")  # Deepgram's interim, 80 ms into the quiet
    [request] = d.published(BrainTurn)
    assert request.user_text == "what are your opening hours"
    tentative = d.turn
    assert not tentative.committed and tentative.preemptive and tentative.turn_id > greeting.turn_id
    d.sentence(tentative.turn_id, 0, REPLY[0])  # the brain is quick: held, not spoken yet
    assert len(d.published(Synthesize)) == 2

    d.wait(120)
    d.speech_ended()
    d.wait(20)
    d.final(QUESTION)  # same words, other case and punctuation
    assert d.pending(TimerKind.END_OF_TURN)
    effects = d.fire(TimerKind.END_OF_TURN)
    assert d.turn is tentative and tentative.committed and tentative.caller_text == QUESTION
    assert not d.published(TurnCancel) and len(d.published(BrainTurn)) == 1
    assert [s.text for s in d.published(Synthesize, effects)] == [REPLY[0]]
    assert d.call.state is CallState.THINKING
    assert {"speech_end", "stt_final", "end_of_turn", "brain_request", "first_sentence"} <= tentative.times_us.keys()


def test_a_final_with_other_words_cancels_the_preemptive_reply_and_asks_again() -> None:
    d = Driver()
    d.greet()
    d.speech_started()
    d.wait(800)
    d.interim_pause("I need to cancel my")
    tentative = d.turn
    d.wait(100)
    d.speech_ended()
    d.wait(20)
    d.final("I need to cancel my appointment.")
    d.fire(TimerKind.END_OF_TURN)
    [cancel] = d.published(TurnCancel)
    assert (cancel.turn_id, cancel.reason) == (tentative.turn_id, "transcript_changed")
    assert [b.user_text for b in d.published(BrainTurn)] == ["I need to cancel my", "I need to cancel my appointment."]
    assert d.turn.committed and d.turn.turn_id > tentative.turn_id


def test_the_caller_going_on_after_a_pause_cancels_the_preemptive_reply() -> None:
    d = Driver()
    d.greet()
    d.speech_started()
    d.interim_pause("I need to cancel my")
    tentative = d.turn
    d.speech_started()
    assert [(c.turn_id, c.reason) for c in d.published(TurnCancel)] == [(tentative.turn_id, "caller_continued")]
    assert d.call.state is CallState.CALLER_SPEAKING
    assert [t.kind for t in d.call.record.turns] == ["greeting"]  # never heard, never an answer


def test_backchannel_over_the_reply_pauses_then_resumes_and_gets_no_answer() -> None:
    assert is_backchannel(BACKCHANNEL, TurnOptions())
    d = Driver()
    d.greet()
    reply = d.answered(QUESTION, REPLY)
    assert d.call.state is CallState.SPEAKING
    d.mark(reply.turn_id, 0, 1000)
    d.speech_started()
    assert [p.turn_id for p in d.published(PlaybackPause)] == [reply.turn_id]
    assert d.call.state is CallState.PAUSED and d.pending(TimerKind.OVERLAP)
    d.wait(400)
    d.speech_ended()
    d.wait(20)
    d.final(BACKCHANNEL)
    assert [p.turn_id for p in d.published(PlaybackResume)] == [reply.turn_id]
    assert d.call.state is CallState.SPEAKING and not d.pending(TimerKind.OVERLAP)
    assert not d.published(TurnCancel) and len(d.published(BrainTurn)) == 1
    assert reply.paused == 1 and d.call.caller.parts == []
    d.play(reply)
    [record] = [t for t in d.call.record.turns if t.kind == "reply"]
    assert record.paused == 1 and not record.interrupted and record.heard_text == record.reply_text
    assert d.call.state is CallState.LISTENING and len(d.published(BrainTurn)) == 1


def test_the_same_acknowledgement_after_the_agent_asked_is_an_answer() -> None:
    d = Driver()
    d.greet()
    reply = d.answered("I'd like to book a cleaning", ["Sure.", "Is Tuesday at ten good for you?"])
    d.play(reply)  # the agent finished its question
    assert d.call.state is CallState.LISTENING
    d.says(BACKCHANNEL, ms=300)
    assert not d.published(PlaybackPause)
    while d.pending(TimerKind.END_OF_TURN):
        d.fire(TimerKind.END_OF_TURN)
    answer = d.published(BrainTurn)[-1]
    assert answer.user_text == BACKCHANNEL
    assert answer.history[-1].content == "Sure. Is Tuesday at ten good for you?"
    assert d.turn.committed and d.turn.caller_text == BACKCHANNEL
    assert d.call.state is CallState.THINKING


def test_words_over_the_reply_confirm_the_barge_in_and_the_history_keeps_what_was_heard() -> None:
    d = Driver()
    d.greet()
    reply = d.answered(QUESTION, REPLY)
    d.wait(2500)
    d.mark(reply.turn_id, 0, 2380, sentence_end=True)  # the first sentence, whole
    d.mark(reply.turn_id, 1, 1050)  # half of the second (30 chars * 70 ms of audio)
    d.speech_started()
    d.wait(300)
    d.final("stop, what about Sunday")
    [cancel] = d.published(TurnCancel)
    assert (cancel.turn_id, cancel.reason) == (reply.turn_id, "barge_in")
    assert d.call.state is CallState.CALLER_SPEAKING
    heard = "We open at nine and close at six. On Saturdays we"
    assert d.call.history[-1].content == heard
    assert d.call.record.turns[-1].interrupted and d.call.record.turns[-1].heard_text == heard
    d.wait(500)
    d.speech_ended()
    while d.pending(TimerKind.END_OF_TURN):
        d.fire(TimerKind.END_OF_TURN)
    request = d.published(BrainTurn)[-1]
    assert request.user_text == "stop, what about Sunday"
    assert [h.content for h in request.history][-2:] == [QUESTION, heard]


def test_speech_going_on_confirms_the_barge_in_and_an_unheard_question_stays_open() -> None:
    d = Driver()
    d.greet()
    reply = d.answered(QUESTION, REPLY)
    d.speech_started()  # before a word of the reply was heard
    d.wait(1200)
    d.fire(TimerKind.OVERLAP)
    assert [(c.turn_id, c.reason) for c in d.published(TurnCancel)] == [(reply.turn_id, "barge_in")]
    assert [t.kind for t in d.call.record.turns] == ["greeting"]  # answered nothing: not in the record
    d.wait(1000)
    d.speech_ended()
    d.wait(20)
    d.final("and on Sundays?")
    while d.pending(TimerKind.END_OF_TURN):
        d.fire(TimerKind.END_OF_TURN)
    assert d.published(BrainTurn)[-1].user_text == f"{QUESTION} and on Sundays?"


@pytest.mark.parametrize("mode", ["keep_talking", "words_only"])
def test_other_barge_in_modes_talk_through_a_backchannel_without_pausing(mode: str) -> None:
    d = Driver(TurnOptions(barge_in=mode))  # type: ignore[arg-type]
    d.greet()
    reply = d.answered(QUESTION, REPLY)
    d.speech_started()
    assert not d.published(PlaybackPause) and d.call.state is CallState.SPEAKING
    assert bool(d.pending(TimerKind.OVERLAP)) == (mode == "keep_talking")
    d.wait(300)
    d.speech_ended()
    d.final("mm-hmm")
    assert not d.published(PlaybackResume) and not d.published(TurnCancel)
    assert reply.paused == 1 and d.call.state is CallState.SPEAKING
    d.speech_started()
    d.final("wait, no")
    assert [c.reason for c in d.published(TurnCancel)] == ["barge_in"]


def test_a_keypad_digit_ends_the_turn_at_once_and_carries_an_unheard_question() -> None:
    d = Driver()
    d.greet()
    d.dtmf("1")
    assert d.published(BrainTurn)[-1].user_text == "(The caller pressed 1 on the keypad.)"
    assert d.turn.committed and d.call.state is CallState.THINKING
    reply = d.turn
    d.dtmf("2")  # the answer to "1" was never heard: it is asked again with the new digit
    assert [(c.turn_id, c.reason) for c in d.published(TurnCancel)] == [(reply.turn_id, "dtmf")]
    assert d.published(BrainTurn)[-1].user_text == (
        "(The caller pressed 1 on the keypad.) (The caller pressed 2 on the keypad.)"
    )


def test_a_stale_timer_expiry_is_ignored() -> None:
    d = Driver()
    d.greet()
    d.says("I need to cancel my")  # sounds unfinished: a long end-of-turn wait
    stale = d.pending(TimerKind.END_OF_TURN)
    assert stale is not None
    d.speech_started()  # the caller goes on: the wait is off, but its expiry may be queued
    assert d.send(TimerFired(stale.timer, stale.timer_id)) == []
    assert d.call.state is CallState.CALLER_SPEAKING


def test_transitions_outside_the_table_raise() -> None:
    assert transition(CallState.THINKING, CallState.SPEAKING) is CallState.SPEAKING
    with pytest.raises(IllegalTransition):
        transition(CallState.LISTENING, CallState.PAUSED)  # nothing plays that could pause
    with pytest.raises(IllegalTransition):
        transition(CallState.CALLER_SPEAKING, CallState.SPEAKING)
    for state in CallState:
        with pytest.raises(IllegalTransition):
            transition(CallState.ENDED, state)
    assert set(TRANSITIONS) == set(CallState)


def test_a_snapshot_of_the_call_resumes_with_the_same_effects() -> None:
    d = Driver()
    d.greet()
    reply = d.answered(QUESTION, REPLY)
    d.mark(reply.turn_id, 0, 1000)
    restored = msgspec.json.decode(msgspec.json.encode(d.call), type=Call)
    assert restored == d.call
    event = SpeechStarted(call_id=CALL_ID, at_us=d.now_us)
    effects = d.send(event)
    assert step(restored, event, d.now_us) == effects
    assert restored == d.call and d.published(PlaybackPause, effects)


def test_a_blank_final_after_a_keypad_digit_leaves_the_floor_to_the_reply() -> None:
    d = Driver()
    d.greet()
    d.speech_started()
    d.dtmf("3")  # ends the turn while the recogniser still hears something
    reply = d.turn
    d.wait(300)
    d.speech_ended()
    d.final("")  # it was no word
    assert d.call.state is CallState.THINKING and not d.pending(TimerKind.IDLE)
    d.speech_started()  # the caller talks over the reply to the digit: it pauses as any reply
    assert [p.turn_id for p in d.published(PlaybackPause)] == [reply.turn_id]
    assert d.call.state is CallState.PAUSED
