"""The webhook events a call record implies. Derived from the record, not from the bus
messages as they fly by: the record holds a turn only once it is final (so a transcript
line is sent once, never a partial or a turn later cut), it is snapshotted with the call,
and a new owner after a failover has the same record. Each event's id is a function of the
call and the turn, so the new owner derives the same ids and the delivery record tells it
which were sent: a receiver dedupes on `id` (`Voxline-Event-Id`) for the rare event sent
twice (an owner dying between a receiver's 2xx and writing it down).

`call.ended` carries the whole record, its post-call analysis included, so it waits while the
analysis is `pending` (`concluded`): the owner writes the ended record at once and the
analysis when the brain answers (or fails to); a record without an analysis (older records,
the gateway's records of calls that never reached an orchestrator) concludes at its end.

A caller's line is final when its turn is concluded (the agent's reply to it was heard or
cut), so `transcript.final` for the caller arrives with the agent's answer to it, in order.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

import msgspec

from proto.records import CallRecord
from proto.webhooks import EventType


class WebhookEvent(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    type: EventType
    call_id: str
    agent_id: str
    body: bytes  # the JSON sent, signed as is


def iso(at_us: int) -> str:
    return datetime.fromtimestamp(at_us / 1e6, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _event(record: CallRecord, kind: EventType, suffix: str, at_us: int, data: dict[str, Any]) -> WebhookEvent:
    event_id = f"evt_{record.call_id}_{suffix}"
    body = {
        "id": event_id,
        "type": kind,
        "created_at": iso(at_us),
        "call_id": record.call_id,
        "agent_id": record.agent_id,
        "data": data,
    }
    return WebhookEvent(
        id=event_id, type=kind, call_id=record.call_id, agent_id=record.agent_id, body=msgspec.json.encode(body)
    )


def concluded(record: CallRecord) -> bool:
    """The call ended and nothing more will be added to its record by its owner."""
    return record.status == "ended" and (record.analysis is None or record.analysis.status != "pending")


def implied_events(record: CallRecord, known: Collection[str], now_us: int) -> list[WebhookEvent]:
    """The events `record` implies whose ids are not in `known`, in the order they
    happened. Bodies are built only for new events (a long call's record is seen often)."""
    out: list[WebhookEvent] = []
    call_id = record.call_id
    if f"evt_{call_id}_started" not in known:
        data: dict[str, Any] = {
            "call_sid": record.call_sid,
            "from_number": record.from_number,
            "to_number": record.to_number,
            "started_at": iso(record.started_at_us),
        }
        out.append(_event(record, "call.started", "started", record.started_at_us, data))
    for turn in record.turns:
        agent_text = turn.heard_text if turn.interrupted else (turn.reply_text or turn.heard_text)
        for speaker, text in (("caller", turn.caller_text), ("agent", agent_text)):
            suffix = f"t{turn.turn_id}_{speaker}"
            if not text or f"evt_{call_id}_{suffix}" in known:
                continue
            line: dict[str, Any] = {"speaker": speaker, "text": text, "turn_id": turn.turn_id, "turn_kind": turn.kind}
            if speaker == "agent":
                line["interrupted"] = turn.interrupted
            out.append(_event(record, "transcript.final", suffix, now_us, line))
    if concluded(record) and f"evt_{call_id}_ended" not in known:
        ended = {"record": msgspec.to_builtins(record)}
        out.append(_event(record, "call.ended", "ended", record.ended_at_us or now_us, ended))
    return out
