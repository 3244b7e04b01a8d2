"""The calls, read back: `GET /v1/calls` (filtered, newest first, a page at a time) and
`GET /v1/calls/{call_id}` (one whole record, transcript included).

The records live in the JetStream KV bucket `CALL_RECORDS_BUCKET`, one key per call, which
is a key-value store and not a query engine: there is no index to ask for "agent X's
calls of last week, newest first". So a listing reads every record once, through ONE
ordered consumer on the bucket's stream (a KV watch delivering the last value of each
key, then stopping), filters and sorts in memory, and returns one page. That is one round
trip per request rather than one `get` per key, but it still costs O(all records) bytes
and decode time on every page. Measured here (2 shared cores, records of 10 turns, 5.4 KB
each, written with Bus.kv_put to a local nats-server, read_summaries + page timed): 1 000 records 0.1 s per
listing, 10 000 0.5 s, 30 000 1.75 s; so it stops being fit for an interactive API at
some 10 000 records in the bucket, which holds a week of calls (`CALL_RECORD_TTL_S` in the
orchestrator): about 1 400 calls a day. Past that the listing needs an index kept beside the bucket (a
summary per call, fed by a watch, or a real database) instead of a scan; the cursor would
stay as it is, since it names a position in the order, not an offset in a scan.

Pagination: the order is (`started_at_us`, `call_id`) descending, a total and stable
order; the cursor holds the last position returned and the filters it was made for, so
calls that start while a client pages through come before its first page, never
twice or shifted into the pages it has yet to read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, cast

import msgspec
from fastapi import FastAPI, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from nats.js.errors import BucketNotFoundError, NotFoundError

from proto.messages import CallDirection
from proto.records import CALL_RECORDS_BUCKET, CallRecord, CallStatus
from services.gateway.api_errors import ErrorResponse, error
from services.gateway.calls_models import CallList, CallRecordOut
from voxline.bus import Bus

log = logging.getLogger("voxline.gateway.calls")

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_CURSOR = 512  # characters; ours are about 120
READ_TIMEOUT_S = 10.0  # for reading the whole bucket: past it the listing answers 503
CURSOR_VERSION = 1
EPOCH_SECONDS = re.compile(r"^\d{1,12}(\.\d{1,6})?$")


class CallSummary(msgspec.Struct, kw_only=True):
    """What the filters and the order look at in a record. Decoding into it skips the rest
    (the transcript is the bulk of a record); the page shown is decoded again, whole."""

    call_id: str
    agent_id: str
    status: CallStatus
    direction: CallDirection = "inbound"
    from_number: str = ""
    to_number: str = ""
    started_at_us: int


_decode_summary = msgspec.json.Decoder(CallSummary)


@dataclass(frozen=True)
class CallFilters:
    agent_id: str | None = None
    status: CallStatus | None = None
    direction: CallDirection | None = None
    number: str | None = None  # the caller's or the called number
    started_after_us: int | None = None  # inclusive
    started_before_us: int | None = None  # exclusive

    def matches(self, call: CallSummary) -> bool:
        return (
            (self.agent_id is None or call.agent_id == self.agent_id)
            and (self.status is None or call.status == self.status)
            and (self.direction is None or call.direction == self.direction)
            and (self.number is None or self.number in (call.from_number, call.to_number))
            and (self.started_after_us is None or call.started_at_us >= self.started_after_us)
            and (self.started_before_us is None or call.started_at_us < self.started_before_us)
        )

    def digest(self) -> str:
        """Which filters a cursor was made for: a cursor is only valid with the same ones."""
        fields = msgspec.json.encode(
            [
                self.agent_id,
                self.status,
                self.direction,
                self.number,
                self.started_after_us,
                self.started_before_us,
            ]
        )
        return hashlib.sha256(fields).hexdigest()[:16]


class InvalidCursor(ValueError):
    """The cursor is not one this API handed out, or was made for other filters."""


class _Cursor(msgspec.Struct, array_like=True):
    version: int
    started_at_us: int
    call_id: str
    filters: str  # CallFilters.digest()
    check: str


def _check(version: int, started_at_us: int, call_id: str, filters: str) -> str:
    """A checksum, not a signature: a cursor only says where a listing stopped, and one made
    up by hand reaches no call the same key could not list anyway. It makes an edited or
    truncated cursor a clear 400 instead of a page that silently starts somewhere else."""
    data = msgspec.json.encode(["voxline-calls-cursor", version, started_at_us, call_id, filters])
    return hashlib.sha256(data).hexdigest()[:16]


def encode_cursor(position: tuple[int, str], filters: CallFilters) -> str:
    started_at_us, call_id = position
    digest = filters.digest()
    cursor = _Cursor(CURSOR_VERSION, started_at_us, call_id, digest, _check(CURSOR_VERSION, *position, digest))
    return base64.urlsafe_b64encode(msgspec.json.encode(cursor)).decode().rstrip("=")


def decode_cursor(token: str, filters: CallFilters) -> tuple[int, str]:
    """The position after which the next page starts. Raise InvalidCursor."""
    if len(token) > MAX_CURSOR or not token.isascii():
        raise InvalidCursor("cursor is not one this API handed out")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        cursor = msgspec.json.decode(raw, type=_Cursor)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidCursor("cursor is not one this API handed out") from None
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != token:  # the last character's spare bits
        raise InvalidCursor("cursor is not one this API handed out")
    expected = _check(cursor.version, cursor.started_at_us, cursor.call_id, cursor.filters)
    if cursor.version != CURSOR_VERSION or cursor.check != expected:
        raise InvalidCursor("cursor is not one this API handed out")
    if cursor.filters != filters.digest():
        raise InvalidCursor("cursor was made for other filters: repeat the first request's filters with it")
    return cursor.started_at_us, cursor.call_id


def page(
    calls: list[CallSummary], filters: CallFilters, after: tuple[int, str] | None, limit: int
) -> tuple[list[CallSummary], tuple[int, str] | None]:
    """One page, newest first, strictly after `after`; and the position to go on from
    (None on the last page)."""
    chosen = [c for c in calls if filters.matches(c) and (after is None or (c.started_at_us, c.call_id) < after)]
    chosen.sort(key=lambda c: (c.started_at_us, c.call_id), reverse=True)
    more = len(chosen) > limit
    shown = chosen[:limit]
    return shown, ((shown[-1].started_at_us, shown[-1].call_id) if more else None)


def listed(raw: bytes) -> dict[str, Any]:
    """A record as a listing shows it: every field but the turns."""
    record = msgspec.json.decode(raw)
    record.pop("turns", None)
    return cast(dict[str, Any], record)


async def read_summaries(bus: Bus, bucket: str = CALL_RECORDS_BUCKET) -> tuple[list[CallSummary], dict[str, bytes]]:
    """Every call's summary, and its stored record by call id, from one ordered consumer
    (see the module's docstring for the cost). A record that does not decode is logged and
    left out, not a failed listing.

    The read ends at the stream's last sequence just after the watch began (every key's
    last value then has a sequence up to it, a value written since comes in order, live:
    a call updated during the read comes twice, and its later value counts), not at the
    watch's own end-of-snapshot marker: nats-py sends that marker before the entries when
    the server delivered them all before the client counted one (seen here under load: a
    listing with 8 of 30 calls)."""
    js = bus.nc.jetstream()
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:  # no orchestrator has started yet: no calls either
        return [], {}
    watcher = await kv.watchall()
    latest: dict[str, CallSummary] = {}
    stored: dict[str, bytes] = {}
    unreadable: set[str] = set()
    try:
        try:
            state = (await js.stream_info(f"KV_{bucket}")).state
        except NotFoundError:
            return [], {}
        if not state.messages:
            return [], {}
        async for entry in watcher:
            if entry is None:  # the marker: see above
                continue
            latest.pop(entry.key, None)
            stored.pop(entry.key, None)
            unreadable.discard(entry.key)
            if entry.operation is None and entry.value:  # not deleted or expired
                try:
                    call = _decode_summary.decode(entry.value)
                except (msgspec.ValidationError, msgspec.DecodeError):
                    call = None
                if call is None or call.call_id != entry.key:
                    unreadable.add(entry.key)
                else:
                    latest[entry.key] = call
                    stored[entry.key] = entry.value
            if entry.revision >= state.last_seq:  # what the bucket held when the read began
                break
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped
    if unreadable:
        log.error("%d call records do not match the contract: left out of the listing", len(unreadable))
    return list(latest.values()), stored


def _invalid(field: str, message: str) -> RequestValidationError:
    """A 422 like FastAPI's own, for checks its parameter types cannot express."""
    return RequestValidationError([{"loc": ("query", field), "msg": message, "type": "value_error"}])


def parse_time(field: str, value: str | None) -> int | None:
    """ISO-8601 (`2026-12-04T05:00:00Z`; without a zone: UTC) or epoch seconds, as µs."""
    if value is None:
        return None
    text = value.strip()
    if EPOCH_SECONDS.match(text):
        return round(float(text) * 1_000_000)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise _invalid(field, "expected an ISO-8601 time (2026-12-04T05:00:00Z) or epoch seconds") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return round(at.timestamp() * 1_000_000)


def e164(number: str | None) -> str | None:
    """`?number=+15551234567` typed into a URL unencoded arrives as " 15551234567" (a `+`
    in a query string is a space): that is the number meant, not a number nobody has."""
    if number is not None and number.startswith(" ") and number[1:].isdigit():
        return "+" + number[1:]
    return number


async def call_record(bus: Bus, call_id: str) -> CallRecord | Response:
    if not (0 < len(call_id) <= 64 and call_id.isascii() and call_id.isalnum()):
        return error(400, "invalid call id: letters and digits only, like CA0123…", field="call_id")
    try:
        record = await bus.kv_get(CALL_RECORDS_BUCKET, call_id, CallRecord)
    except msgspec.ValidationError as exc:
        log.error("call record %s does not match the contract: %s", call_id, exc)
        return error(500, f"call record {call_id} is unreadable")
    if record is None:
        return error(404, f"no call {call_id}")
    return record


ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse, "description": why}
    for code, why in (
        (400, "A bad cursor or call id."),
        (401, "Missing, unknown or revoked API key."),
        (422, "A filter out of range or malformed; `error.field` names it."),
        (503, "The call records cannot be read right now."),
    )
}


def install(app: FastAPI, bus: Bus) -> None:
    @app.get("/v1/calls", response_model=CallList, responses=ERRORS, tags=["calls"])
    async def list_calls(
        agent_id: Annotated[str | None, Query(max_length=128, description="Only this agent's calls.")] = None,
        status: Annotated[CallStatus | None, Query(description="`in-progress` or `ended`.")] = None,
        direction: Annotated[CallDirection | None, Query(description="`inbound` or `outbound`.")] = None,
        number: Annotated[
            str | None, Query(max_length=64, description="Calls from or to this number (E.164: +15551234567).")
        ] = None,
        started_after: Annotated[
            str | None, Query(max_length=40, description="Started at or after: ISO-8601 or epoch seconds.")
        ] = None,
        started_before: Annotated[
            str | None, Query(max_length=40, description="Started before: ISO-8601 or epoch seconds.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Calls per page.")] = DEFAULT_LIMIT,
        cursor: Annotated[
            str | None, Query(description="`next_cursor` of the previous page, with the same filters.")
        ] = None,
    ) -> Response:
        """Calls, newest first (by start time, then call id), a page at a time: follow
        `next_cursor` until it is null to see every matching call exactly once."""
        filters = CallFilters(
            agent_id=agent_id,
            status=status,
            direction=direction,
            number=e164(number),
            started_after_us=parse_time("started_after", started_after),
            started_before_us=parse_time("started_before", started_before),
        )
        try:
            after = decode_cursor(cursor, filters) if cursor else None
        except InvalidCursor as exc:
            return error(400, str(exc), field="cursor")
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                calls, stored = await read_summaries(bus)
        except Exception as exc:  # NATS down or too slow: the client may retry
            log.error("could not read the call records: %r", exc)
            return error(503, "call records cannot be read right now", headers={"Retry-After": "1"})
        shown, position = page(calls, filters, after, limit)
        body = {
            "calls": [listed(stored[c.call_id]) for c in shown],
            "next_cursor": encode_cursor(position, filters) if position else None,
        }
        return Response(msgspec.json.encode(body), media_type="application/json")

    @app.get(
        "/v1/calls/{call_id}",
        response_model=CallRecordOut,
        responses={**ERRORS, 404: {"model": ErrorResponse, "description": "No such call."}},
        tags=["calls"],
    )
    async def get_call(call_id: str) -> Response:
        """One call's whole record: numbers, direction, status, timestamps, every turn with
        what the caller said, what the agent said and what the caller heard of it, and the
        per-stage latency of each turn."""
        record = await call_record(bus, call_id)
        if isinstance(record, Response):
            return record
        return Response(msgspec.json.encode(record), media_type="application/json")
