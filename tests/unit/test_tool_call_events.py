"""Tool calls in the call's live events and in its OpenAPI model: `tool.called` per tool
call of a turn, with the model's arguments and the result, before the turn's `turn.ended`,
each once (a record revision seen again, or a reconnect, repeats none)."""

from __future__ import annotations

from proto.messages import ToolCallReport
from proto.records import CallRecord, TurnRecord
from services.gateway.calls_models import CallRecordOut
from services.gateway.events_api import record_events, skip_through

LOOKUP = ToolCallReport(
    name="lookup_appointment",
    kind="webhook",
    arguments='{"name": "Ana Silva"}',
    result='{"appointment": "Tuesday"}',
    duration_ms=12.5,
    at_us=1_796_360_412_500_000,
)
REFUSED = ToolCallReport(
    name="transfer_call",
    kind="transfer_call",
    arguments='{"phone_number": "+19005550123"}',
    error="transfer refused: that number is not allowed.",
    refused=True,
    at_us=1_796_360_412_600_000,
)


def record(*turns: TurnRecord) -> CallRecord:
    return CallRecord(
        call_id="CA1", call_sid="CA1", agent_id="demo", status="in-progress", started_at_us=1, turns=list(turns)
    )


def test_tool_calls_are_events_before_their_turns_end() -> None:
    turn = TurnRecord(
        turn_id=2, kind="reply", caller_text="When is it?", reply_text="Tuesday.", tool_calls=[LOOKUP, REFUSED]
    )
    sent: set[str] = set()
    events = record_events(record(turn), sent)
    names = [e.event for e in events]
    assert names == ["call.started", "transcript.final", "transcript.final", "tool.called", "tool.called", "turn.ended"]
    first, second = events[3], events[4]
    assert first.id == "evt_CA1_t2_tool0" and second.id == "evt_CA1_t2_tool1"
    assert first.data["name"] == "lookup_appointment" and first.data["arguments"] == '{"name": "Ana Silva"}'
    assert first.data["result"] == '{"appointment": "Tuesday"}' and first.data["duration_ms"] == 12.5
    assert first.data["turn_id"] == 2 and first.data["call_id"] == "CA1" and first.data["at"].startswith("2026-")
    assert second.data["refused"] is True and "not allowed" in second.data["error"]
    assert record_events(record(turn), sent) == []  # the same revision again: nothing new
    assert [e.id for e in skip_through(events, "evt_CA1_t2_tool0")] == ["evt_CA1_t2_tool1", "evt_CA1_t2_turn"]


def test_a_dtmf_turn_says_its_keys() -> None:
    events = record_events(record(TurnRecord(turn_id=3, kind="dtmf", dtmf="2")), set())
    (ended,) = [e for e in events if e.event == "turn.ended"]
    assert ended.data["kind"] == "dtmf" and ended.data["dtmf"] == "2"


def test_the_openapi_turn_documents_its_tool_calls() -> None:
    schema = CallRecordOut.model_json_schema()
    tool_call = schema["$defs"]["ToolCall"]
    assert set(tool_call["properties"]) == {
        "name",
        "kind",
        "arguments",
        "result",
        "error",
        "refused",
        "duration_ms",
        "at_us",
    }
    assert all(p["description"] for p in tool_call["properties"].values())
    turn = schema["$defs"]["Turn"]["properties"]
    assert turn["tool_calls"]["items"] == {"$ref": "#/$defs/ToolCall"} and turn["dtmf"]["description"]
