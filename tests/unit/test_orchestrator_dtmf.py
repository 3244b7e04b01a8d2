"""The orchestrator's side of tool calls and send_dtmf, driven through `core.step`: the
brain's tool call reports land in the turn's record (and the call's snapshot), and the
`dtmf` action becomes, once the reply was heard, a turn of keypad tones ordered from the
gateway, after which the call listens for the IVR."""

from __future__ import annotations

import msgspec

from proto import subjects
from proto.messages import ReplyDone, ReplyError, SendDtmf, ToolCallReport
from services.orchestrator.call import Call
from services.orchestrator.effects import Publish, SaveRecord
from services.orchestrator.states import CallState
from services.orchestrator.timers import TimerKind
from tests.unit.orchestrator_driver import CALL_ID, Driver

PRESS = ToolCallReport(
    name="press", kind="send_dtmf", arguments='{"digits": "2"}', result='{"status": "sent"}', duration_ms=0.1
)


def test_the_keys_are_a_turn_of_their_own_after_the_reply_was_heard() -> None:
    d = Driver()
    d.greet()
    d.says("For billing press 2.")
    while d.pending(TimerKind.END_OF_TURN):
        d.fire(TimerKind.END_OF_TURN)
    reply = d.turn
    effects = d.send(
        ReplyDone(call_id=CALL_ID, turn_id=reply.turn_id, sentences=0, at_us=d.now_us, action="dtmf", action_arg="2")
    )
    assert not d.published(SendDtmf, effects)  # nothing pressed before the reply was heard
    effects = d.play(reply)
    (order,) = d.published(SendDtmf, effects)
    keys = d.turn
    assert keys.kind == "dtmf" and keys.turn_id == order.turn_id > reply.turn_id and order.digits == "2"
    assert [e.subject for e in effects if isinstance(e, Publish) and e.message is order] == [subjects.control(CALL_ID)]
    assert d.call.state is CallState.THINKING
    d.audio_sent(keys.turn_id)
    assert d.call.state is CallState.SPEAKING
    effects = d.mark(keys.turn_id, 0, 170, sentence_end=True, turn_end=True)
    assert d.call.state is CallState.LISTENING and d.pending(TimerKind.IDLE)
    records = [e.record for e in effects if isinstance(e, SaveRecord)]
    assert records and records[-1].turns[-1].kind == "dtmf" and records[-1].turns[-1].dtmf == "2"
    assert not d.published(SendDtmf, effects)  # pressed once


def test_tool_calls_go_into_the_turns_record_and_the_snapshot() -> None:
    d = Driver()
    d.greet()
    d.says("When is my appointment?")
    while d.pending(TimerKind.END_OF_TURN):
        d.fire(TimerKind.END_OF_TURN)
    turn = d.turn
    d.sentence(turn.turn_id, 0, "Tuesday at three.")
    d.send(ReplyDone(call_id=CALL_ID, turn_id=turn.turn_id, sentences=1, at_us=d.now_us, tool_calls=[PRESS]))
    snapshot = msgspec.json.decode(msgspec.json.encode(d.call), type=Call)  # what a takeover resumes from
    assert snapshot.turns[-1].tool_calls == [PRESS]
    effects = d.play(turn)
    records = [e.record for e in effects if isinstance(e, SaveRecord)]
    assert records[-1].turns[-1].tool_calls == [PRESS]
    assert records[-1].turns[-1].reply_text == "Tuesday at three."


def test_tool_calls_of_a_reply_that_failed_are_in_the_apologys_record() -> None:
    d = Driver()
    d.greet()
    d.says("Book me for Tuesday.")
    while d.pending(TimerKind.END_OF_TURN):
        d.fire(TimerKind.END_OF_TURN)
    turn = d.turn
    d.send(ReplyError(call_id=CALL_ID, turn_id=turn.turn_id, message="openai: server error", tool_calls=[PRESS]))
    assert turn.kind == "apology"
    records = [e.record for e in d.play(turn) if isinstance(e, SaveRecord)]
    assert records[-1].turns[-1].tool_calls == [PRESS]
