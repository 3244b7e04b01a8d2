"""What the gateway knows about how its calls ended, for Twilio's callbacks to act on.

Twilio tells us late what became of a call: the `<Connect action>` comes after the media
stream closed, the `<Dial action>` after a transfer rang out, the status callback after an
outbound call was busy. The answers depend on what happened here first (did the agent hang
up, was a transfer ordered, was the stream refused). Behind a load balancer the callback
may reach another gateway than the one that held the stream, or the holder may be dead:
so what each gateway knows of its streams is kept in JetStream KV too
(`STREAM_ENDS_BUCKET`), and read from there when this gateway does not know the call.
What Twilio reports goes into the call record.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec

from proto.records import CALL_RECORDS_BUCKET, STREAM_ENDS_BUCKET, CallRecord, StreamEndRecord
from voxline.bus import Bus, RevisionMismatch
from voxline.telemetry import now_us

log = logging.getLogger("voxline.gateway.outcomes")

V = TypeVar("V")

REMEMBERED = 10_000  # calls per kind; Twilio's callbacks come seconds to minutes after the stream
STREAM_ENDS_TTL_S = 3600.0  # in KV: a transfer's <Dial action> comes when the human hangs up
# Why a stream ended without the agent's doing (media_stream.py): the socket broke under the
# call (no `stop`), or a write to it stalled. Twilio may come back with a new stream.
STREAM_CLOSED = "stream closed"
SEND_STALLED = "send stalled"
SUPERSEDED = "superseded by a newer stream"  # closed by us: the call goes on on the newer stream
LOST_REASONS = frozenset({STREAM_CLOSED, SEND_STALLED, SUPERSEDED})
CALL_BUSY = "busy"  # refused: no orchestrator or STT worker had room for the call
# WebSocket close reasons of a stream Twilio ended: not the agent's doing.
STREAM_LOST = frozenset({"caller hung up", *LOST_REASONS})
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

    @property
    def lost(self) -> bool:
        """The stream broke under the call (no `stop` from Twilio): it may come back."""
        return self.reason in LOST_REASONS


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

    def pop(self, key: str) -> None:
        self._items.pop(key, None)


class CallOutcomes:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.public_base = ""  # the base URL Twilio last reached us on (when VOXLINE_PUBLIC_URL is unset)
        self._ends: _Recent[StreamEnd] = _Recent()
        self._transfers: _Recent[str] = _Recent()
        self._stream_errors: _Recent[str] = _Recent()
        self._bucket_ready = False
        # How a stream still being torn down ended: Twilio may ask as soon as it is closed.
        self.closing_stream: Callable[[str], StreamEnd | None] = lambda _call_sid: None

    # --- what the gateways know of each call's stream -----------------------------------

    async def stream_ended(self, call_sid: str, end: StreamEnd) -> None:
        self._ends.put(call_sid, end)
        await self._update(call_sid, lambda r: msgspec.structs.replace(r, code=end.code, reason=end.reason))

    async def stream_end(self, call_sid: str) -> StreamEnd | None:
        local = self._ends.get(call_sid) or self.closing_stream(call_sid)
        if local is not None:
            return local
        shared = await self._shared(call_sid)
        return StreamEnd(shared.code, shared.reason) if shared is not None and shared.reason else None

    async def transfer_ordered(self, call_sid: str, number: str) -> None:
        self._transfers.put(call_sid, number)
        await self._update(call_sid, lambda r: msgspec.structs.replace(r, transfer_to=number))

    async def transfer_to(self, call_sid: str) -> str:
        local = self._transfers.get(call_sid)
        if local:
            return local
        shared = await self._shared(call_sid)
        return shared.transfer_to if shared is not None else ""

    async def resuming(self, call_sid: str) -> int:
        """A new stream is handed out for the call: it has not ended any more. Returns how
        many streams were handed out so far (this one included)."""
        self._ends.pop(call_sid)
        shared = await self._update(
            call_sid, lambda r: msgspec.structs.replace(r, code=0, reason="", resumes=r.resumes + 1)
        )
        return shared.resumes if shared is not None else 1

    def stream_failed(self, call_sid: str, error: str) -> None:
        self._stream_errors.put(call_sid, error)

    def stream_error(self, call_sid: str) -> str:
        return self._stream_errors.get(call_sid) or ""

    async def _shared(self, call_sid: str) -> StreamEndRecord | None:
        try:
            return await self.bus.kv_get(STREAM_ENDS_BUCKET, call_sid, StreamEndRecord)
        except Exception as exc:  # a callback must still be answered: what this gateway knows
            log.error("could not read how the call's stream ended: %s", exc, extra={"call_id": call_sid})
            return None

    async def _update(
        self, call_sid: str, change: Callable[[StreamEndRecord], StreamEndRecord]
    ) -> StreamEndRecord | None:
        """Read, change, write. Writers of one call's entry follow each other (one stream
        at a time), so a plain put is enough; a failure is logged, the local copy stands."""
        try:
            if not self._bucket_ready:
                await self.bus.create_bucket(STREAM_ENDS_BUCKET, ttl_s=STREAM_ENDS_TTL_S)
                self._bucket_ready = True
            current = await self.bus.kv_get(STREAM_ENDS_BUCKET, call_sid, StreamEndRecord) or StreamEndRecord()
            updated = change(current)
            await self.bus.kv_put(STREAM_ENDS_BUCKET, call_sid, updated)
            return updated
        except Exception as exc:
            log.error("could not share how the call's stream ended: %s", exc, extra={"call_id": call_sid})
            return None

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

    async def never_answered(
        self,
        call_sid: str,
        status: str,
        agent_id: str,
        from_: str,
        to: str,
        answered_by: str = "",
        variables: dict[str, str] | None = None,
    ) -> bool:
        """An outbound call that was busy, not answered or failed, or that a machine answered
        (`answered_by`, the end reason `voicemail` or `machine`), gets a record of its own
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
            direction="outbound",
            answered_by=answered_by,
            variables=variables or {},
        )
        try:
            await self.bus.kv_create(CALL_RECORDS_BUCKET, call_sid, record)
        except RevisionMismatch:
            return False
        return True

    async def machine_answered(
        self,
        call_sid: str,
        agent_id: str,
        from_: str,
        to: str,
        answered_by: str,
        end_reason: str,
        variables: dict[str, str] | None = None,
    ) -> bool:
        """The record of an outbound call a machine answered (voicemail.py), with the
        variables it was placed with."""
        return await self.never_answered(call_sid, end_reason, agent_id, from_, to, answered_by, variables)
