"""A call resumed by another orchestrator from its snapshot: the snapshot round-trips, a
reply nobody heard is asked again, a half-heard one stays in the history as heard, and
whatever the dead owner may have started after its snapshot is cancelled with one order."""

from __future__ import annotations

import msgspec

from proto.messages import BrainTurn, CallStopped, Hangup, Synthesize, Transcript, TurnCancel
from services.orchestrator.call import Call
from services.orchestrator.core import RESUME_TURN_ID_GAP
from services.orchestrator.events import Resumed
from services.orchestrator.states import CallState
from services.orchestrator.timers import TimerKind
from tests.unit.orchestrator_driver import Driver

QUESTION = "What are your opening hours?"
REPLY = ["We open at nine and close at six.", "On Saturdays we close at noon."]


def _failover(d: Driver) -> None:
    """The owner dies; another decodes its last snapshot and resumes the call."""
    d.call = msgspec.json.decode(msgspec.json.encode(d.call), type=Call)
    d.effects = []
    d.wait(1800)  # the lease time and a check
    d.send(Resumed(previous_owner="orchestrator-a"))


def test_the_snapshot_is_the_whole_call() -> None:
    d = Driver()
    d.greet()
    d.answered(QUESTION, REPLY)
    copy = msgspec.json.decode(msgspec.json.encode(d.call), type=Call)
    assert copy == d.call


def test_an_unheard_reply_is_asked_again_above_the_turn_id_gap() -> None:
    d = Driver()
    d.greet()
    lost = d.answered(QUESTION, REPLY)  # audio went out, no mark came back: nothing heard
    next_id = d.call.next_turn_id
    _failover(d)
    [cancel] = d.published(TurnCancel)
    assert cancel.turn_id == next_id + RESUME_TURN_ID_GAP - 1  # reaches every unsaved turn too
    [request] = d.published(BrainTurn)
    assert request.user_text == QUESTION and request.turn_id == next_id + RESUME_TURN_ID_GAP
    assert request.history[-1].content != REPLY[0]  # the unheard answer is not history
    assert d.turn.committed and d.call.state is CallState.THINKING
    assert d.call.turns[-2].turn_id == lost.turn_id and d.call.turns[-2].cancelled
    assert [t.kind for t in d.call.record.turns] == ["greeting"]
    d.sentence(request.turn_id, 0, "Nine to six.")
    assert [s.text for s in d.published(Synthesize)] == ["Nine to six."]  # committed: spoken at once


def test_a_half_heard_reply_is_kept_as_heard_and_the_rest_is_said_on() -> None:
    d = Driver()
    d.greet()
    reply = d.answered(QUESTION, REPLY)
    d.wait(2500)
    d.mark(reply.turn_id, 0, 2380, sentence_end=True)
    _failover(d)
    assert not d.published(BrainTurn)  # nothing to ask again: the answer is known
    assert d.call.history[-1].content == REPLY[0]
    assert d.call.record.turns[-1].interrupted and d.call.record.turns[-1].cancel_reason == "orchestrator failover"
    # The sentence the caller had not heard yet is said on, in a turn past the resume's gap.
    assert [s.text for s in d.published(Synthesize)] == [REPLY[1], ""]
    rest = d.turn
    assert rest.turn_id > reply.turn_id + RESUME_TURN_ID_GAP - 1 and rest.kind == "reply"
    assert rest.continues == reply.turn_id
    assert d.call.state is CallState.THINKING
    d.play(rest)
    assert [h.content for h in d.call.history][-2:] == [REPLY[0], REPLY[1]]
    assert d.call.state is CallState.LISTENING and d.pending(TimerKind.IDLE)
    d.says("and on Sundays?")
    while d.pending(TimerKind.END_OF_TURN):
        d.fire(TimerKind.END_OF_TURN)
    request = d.published(BrainTurn)[-1]
    assert request.user_text == "and on Sundays?"
    assert [h.content for h in request.history][-3:] == [QUESTION, REPLY[0], REPLY[1]]


def test_a_goodbye_cut_by_the_break_still_hangs_up_after_its_rest() -> None:
    d = Driver()
    d.greet()
    reply = d.answered(QUESTION, REPLY)
    reply.action, reply.action_arg = "hangup", "agent said goodbye"
    d.wait(2500)
    d.mark(reply.turn_id, 0, 2380, sentence_end=True)
    _failover(d)
    rest = d.turn
    assert rest.action == "hangup" and [s.text for s in d.published(Synthesize)] == [REPLY[1], ""]
    effects = d.play(rest)
    [hangup] = d.published(Hangup, effects)
    assert hangup.reason == "agent said goodbye"


def test_resumed_between_turns_the_call_just_listens() -> None:
    d = Driver()
    d.greet()
    reply = d.answered(QUESTION, REPLY)
    d.play(reply)
    assert d.call.state is CallState.LISTENING
    turns_before = len(d.call.record.turns)
    _failover(d)
    assert not d.published(BrainTurn) and len(d.published(TurnCancel)) == 1
    assert len(d.call.record.turns) == turns_before and d.call.state is CallState.LISTENING
    assert d.pending(TimerKind.IDLE)


def test_a_caller_mid_sentence_keeps_the_floor_after_the_resume() -> None:
    d = Driver()
    d.greet()
    d.speech_started()
    d.wait(500)
    _failover(d)
    assert d.call.state is CallState.CALLER_SPEAKING and not d.pending(TimerKind.IDLE)
    d.wait(700)
    d.speech_ended()
    d.wait(20)
    d.final(QUESTION)
    while d.pending(TimerKind.END_OF_TURN):
        d.fire(TimerKind.END_OF_TURN)
    assert d.published(BrainTurn)[-1].user_text == QUESTION


def test_an_ended_call_is_not_resumed() -> None:
    d = Driver()
    d.greet()
    d.send(CallStopped(call_id=d.call.call_id, reason="caller hung up", at_us=d.now_us))
    _failover(d)
    assert d.effects == [] and d.call.state is CallState.ENDED


def test_stt_events_replayed_after_a_takeover_are_handled_once() -> None:
    d = Driver()
    d.greet()
    d.speech_started()
    d.wait(900)
    d.speech_ended()
    d.wait(20)
    final = Transcript(call_id=d.call.call_id, text=QUESTION, is_final=True, at_us=d.now_us, provider_ms=15.0)
    d.send(final)
    _failover(d)
    # The STT worker replays the events since the snapshot: this final was in it already.
    d.send(final)
    while d.pending(TimerKind.END_OF_TURN):
        d.fire(TimerKind.END_OF_TURN)
    [request] = d.published(BrainTurn)
    assert request.user_text == QUESTION  # not "QUESTION QUESTION"
