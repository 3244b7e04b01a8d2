"""What the gateway knows about how its calls ended, for Twilio's callbacks to act on.

Twilio tells us late what became of a call: the `<Connect action>` comes after the media
stream closed, the `<Dial action>` after a transfer rang out, the status callback after an
outbound call was busy. The answers depend on what happened here first (did the agent hang
up, was a transfer ordered, was the stream refused), so each gateway remembers that for its
own streams, and writes what Twilio reports into the call record.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec

from proto.records import CALL_RECORDS_BUCKET, CallRecord
from voxline.bus import Bus, RevisionMismatch
from voxline.telemetry import now_us

log = logging.getLogger("voxline.gateway.outcomes")

V = TypeVar("V")

REMEMBERED = 10_000  # calls per kind; Twilio's callbacks come seconds to minutes after the stream
# WebSocket close reasons of a stream Twilio ended (media_stream.py): not the agent's doing.
STREAM_LOST = frozenset({"caller hung up", "stream closed"})
NORMAL_CLOSE = 1000
# https://www.twilio.com/docs/voice/twiml/dial#dialcallstatus-values: the human answered
# (`answered` is what a <Dial><Conference> reports).
DIAL_ANSWERED = frozenset({"completed", "answered"})
# https://www.twilio.com/docs/voice/api/call-resource#call-status-values: an outbound call
# that ended without ever being answered, so no stream and no record of the orchestrator.
NEVER_ANSWERED = frozenset({"busy", "no-answer", "failed", "canceled"})


@dataclass(frozen=True)
class StreamEnd:
    code: int  # the WebSocket close code the gateway used (1000, 1008 refused, 1011 unavailable)
    reason: str

    @property
    def agent_ended(self) -> bool:
        """The agent (orchestrator) closed the stream on purpose: a goodbye was said."""
        return self.code == NORMAL_CLOSE and self.reason not in STREAM_LOST


class _Recent(Generic[V]):
    """A bounded map: the oldest entries go first."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, V] = OrderedDict()

    def put(self, key: str, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > REMEMBERED:
            self._items.popitem(last=False)

    def get(self, key: str) -> V | None:
        return self._items.get(key)


class CallOutcomes:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.public_base = ""  # the base URL Twilio last reached us on (when VOXLINE_PUBLIC_URL is unset)
        self._ends: _Recent[StreamEnd] = _Recent()
        self._transfers: _Recent[str] = _Recent()
        self._stream_errors: _Recent[str] = _Recent()
        # How a stream still being torn down ended: Twilio may ask as soon as it is closed.
        self.closing_stream: Callable[[str], StreamEnd | None] = lambda _call_sid: None

    # --- this gateway's own streams -----------------------------------------------------

    def stream_ended(self, call_sid: str, end: StreamEnd) -> None:
        self._ends.put(call_sid, end)

    def stream_end(self, call_sid: str) -> StreamEnd | None:
        return self._ends.get(call_sid) or self.closing_stream(call_sid)

    def transfer_ordered(self, call_sid: str, number: str) -> None:
        self._transfers.put(call_sid, number)

    def transfer_to(self, call_sid: str) -> str:
        return self._transfers.get(call_sid) or ""

    def stream_failed(self, call_sid: str, error: str) -> None:
        self._stream_errors.put(call_sid, error)

    def stream_error(self, call_sid: str) -> str:
        return self._stream_errors.get(call_sid) or ""

    # --- the call record ----------------------------------------------------------------

    async def record(self, call_sid: str) -> CallRecord | None:
        try:
            return await self.bus.kv_get(CALL_RECORDS_BUCKET, call_sid, CallRecord)
        except msgspec.ValidationError as exc:
            log.error("call record %s does not match the contract: %s", call_sid, exc)
            return None

    async def transfer_ended(self, call_sid: str, dial_status: str) -> CallRecord | None:
        """Twilio's DialCallStatus of a transfer goes into the call's record; one nobody
        answered also becomes its end reason, so "transferred" means someone took it."""
        record = await self.record(call_sid)
        if record is None:
            log.warning("transfer ended (%s) for a call without a record", dial_status, extra={"call_id": call_sid})
            return None
        record.transfer_status = dial_status
        if dial_status not in DIAL_ANSWERED:
            record.end_reason = f"transfer {dial_status}"
        await self.bus.kv_put(CALL_RECORDS_BUCKET, call_sid, record)
        return record

    async def never_answered(self, call_sid: str, status: str, agent_id: str, from_: str, to: str) -> bool:
        """An outbound call that was busy, not answered or failed gets a record of its own
        (nothing else would write one). False when the call already has a record."""
        at_us = now_us()
        record = CallRecord(
            call_id=call_sid,
            call_sid=call_sid,
            agent_id=agent_id,
            status="ended",
            started_at_us=at_us,
            ended_at_us=at_us,
            end_reason=status,
            from_number=from_,
            to_number=to,
        )
        try:
            await self.bus.kv_create(CALL_RECORDS_BUCKET, call_sid, record)
        except RevisionMismatch:
            return False
        return True
