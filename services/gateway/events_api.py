"""`GET /v1/calls/{id}/events`: a call as server-sent events, live, for a dashboard or a
supervisor's screen (https://html.spec.whatwg.org/multipage/server-sent-events.html).

Two sources, so no new subject and nothing the record does not already hold:
- the call record in KV, watched by key: each revision is turned into the same events the
  webhooks send (`voxline.webhooks.events`: call.started, transcript.final per line,
  call.ended) plus `turn.ended` (kind, interrupted and why, the per-stage latency) and, before
  it, `tool.called` for each tool call of the turn's reply (arguments, result), each with
  the webhook event's id. A client that reconnects with `Last-Event-ID` gets only what came
  after that event (the record is the whole history, so nothing is missed in between);
- the STT worker's per-call subject, for what the record never holds: `speech.started`,
  `speech.ended` and `transcript.partial` (no id: they are not replayed).

The stream ends after `call.ended`. A comment line every KEEPALIVE_S keeps proxies from
closing an idle stream. Each stream holds a bounded queue: a client that reads too slowly
loses partial transcripts first (counted), and is cut off if the record's events back up
too, never the gateway's memory. At most `sse_max_streams` streams per gateway (429 beyond).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from nats.aio.msg import Msg

from proto import subjects
from proto.messages import Message, SpeechEnded, SpeechStarted, Transcript
from proto.records import CALL_RECORDS_BUCKET, CallRecord, TurnRecord
from voxline.bus import Bus
from voxline.metrics import SSE_DROPPED
from voxline.telemetry import now_us
from voxline.webhooks.events import concluded, implied_events, iso

log = logging.getLogger("voxline.gateway.events")

KEEPALIVE_S = 15.0
QUEUE_MAX = 256  # events waiting for a slow client; partials go first when it fills
CLOSED = object()  # end of stream marker on the queue


class Sse(msgspec.Struct, frozen=True):
    event: str
    data: dict[str, Any]
    id: str = ""

    def encode(self) -> bytes:
        head = f"id: {self.id}\n" if self.id else ""
        return f"{head}event: {self.event}\ndata: {json.dumps(self.data, separators=(',', ':'))}\n\n".encode()


def record_events(record: CallRecord, sent: set[str]) -> list[Sse]:
    """The events a record revision adds to those already sent (ids in `sent`, updated),
    in the order they happened: a turn's `turn.ended` right after its agent line, and
    `call.ended` last."""
    out: list[Sse] = []
    ended: Sse | None = None
    for event in implied_events(record, sent, now_us()):
        sent.add(event.id)
        data = msgspec.json.decode(event.body)["data"]
        item = Sse(event.type, {"call_id": record.call_id, **data}, event.id)
        if event.type == "call.ended":
            ended = item
            continue
        out.append(item)
        if event.type == "transcript.final" and data.get("speaker") == "agent":
            out.extend(turn_events(record, sent))
    out.extend(turn_events(record, sent))  # turns without an agent line
    if ended is not None:
        out.append(ended)
    return out


def turn_events(record: CallRecord, sent: set[str]) -> list[Sse]:
    """`turn.ended` for each turn the record holds whose agent line is out (or that had none):
    what a waterfall needs, the stages in pipeline order."""
    out: list[Sse] = []
    for turn in record.turns:
        event_id = f"evt_{record.call_id}_t{turn.turn_id}_turn"
        agent_line = f"evt_{record.call_id}_t{turn.turn_id}_agent"
        said = turn.heard_text if turn.interrupted else (turn.reply_text or turn.heard_text)
        if event_id in sent or (said and agent_line not in sent):
            continue
        sent.add(event_id)
        out.extend(tool_events(record.call_id, turn, sent))
        data = {
            "call_id": record.call_id,
            "turn_id": turn.turn_id,
            "kind": turn.kind,
            "interrupted": turn.interrupted,
            "cancel_reason": turn.cancel_reason,
            "preemptive": turn.preemptive,
            "latency_ms": turn.latency,
            **({"dtmf": turn.dtmf} if turn.dtmf else {}),
        }
        out.append(Sse("turn.ended", data, event_id))
    return out


def tool_events(call_id: str, turn: TurnRecord, sent: set[str]) -> list[Sse]:
    """`tool.called` for each tool call of the turn's reply, in the order they ran, with
    the model's arguments and what came back (the record's TurnRecord.tool_calls)."""
    out: list[Sse] = []
    for i, call in enumerate(turn.tool_calls):
        event_id = f"evt_{call_id}_t{turn.turn_id}_tool{i}"
        if event_id in sent:
            continue
        sent.add(event_id)
        data = {"call_id": call_id, "turn_id": turn.turn_id, **msgspec.to_builtins(call), "at": iso(call.at_us)}
        out.append(Sse("tool.called", data, event_id))
    return out


def caller_event(call_id: str, message: Message) -> Sse | None:
    match message:
        case Transcript(is_final=False):
            return Sse("transcript.partial", {"call_id": call_id, "text": message.text, "at": iso(message.at_us)})
        case SpeechStarted():
            return Sse("speech.started", {"call_id": call_id, "at": iso(message.at_us)})
        case SpeechEnded():
            return Sse("speech.ended", {"call_id": call_id, "at": iso(message.at_us)})
    return None  # finals come from the record, once the turn is final


def skip_through(events: list[Sse], last_id: str) -> list[Sse]:
    """What follows `last_id` (a reconnecting client's Last-Event-ID); all if it is unknown."""
    ids = [e.id for e in events]
    return events[ids.index(last_id) + 1 :] if last_id in ids else events


class CallEvents:
    """One client's stream: the record watch and the partials feed one bounded queue."""

    def __init__(self, bus: Bus, call_id: str, last_event_id: str) -> None:
        self.bus = bus
        self.call_id = call_id
        self.last_event_id = last_event_id
        self.queue: asyncio.Queue[Sse | object] = asyncio.Queue(QUEUE_MAX)
        self.sent: set[str] = set()

    def _offer(self, item: Sse | object, droppable: bool) -> bool:
        try:
            self.queue.put_nowait(item)
            return True
        except asyncio.QueueFull:
            SSE_DROPPED.labels(kind="partial" if droppable else "record").inc()
            return False

    async def _on_caller(self, message: Message, _msg: Msg) -> None:
        event = caller_event(self.call_id, message)
        if event is not None:
            self._offer(event, droppable=True)

    async def _watch_record(self) -> None:
        first = True
        try:
            async for change in self.bus.kv_watch_key(CALL_RECORDS_BUCKET, self.call_id):
                if change.value is None:
                    continue
                record = msgspec.json.decode(change.value, type=CallRecord)
                events = record_events(record, self.sent)
                if first and self.last_event_id:
                    events = skip_through(events, self.last_event_id)
                first = False
                for event in events:
                    if not self._offer(event, droppable=False):
                        self._offer(CLOSED, droppable=False)  # too far behind: end it, the client reconnects
                        return
                if concluded(record):  # call.ended was the last event (it waits for the analysis)
                    break
        except msgspec.ValidationError as exc:
            log.error("call record %s does not match the contract: %s", self.call_id, exc)
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(CLOSED)

    async def stream(self, request: Request) -> AsyncIterator[bytes]:
        sub = await self.bus.subscribe(subjects.stt_events(self.call_id), self._on_caller)
        watch = asyncio.create_task(self._watch_record())
        try:
            yield b": voxline call events\n\n"
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_S):
                        item = await self.queue.get()
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield b": keep-alive\n\n"
                    continue
                if item is CLOSED:
                    return
                assert isinstance(item, Sse)
                yield item.encode()
        finally:
            watch.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watch


def install(app: FastAPI, bus: Bus, max_streams: int) -> None:
    open_streams = 0

    @app.get(
        "/v1/calls/{call_id}/events",
        tags=["calls"],
        summary="A call's live events (server-sent events)",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "text/event-stream: call.started, speech.started, transcript.partial, speech.ended, "
                "transcript.final (speaker caller|agent), tool.called (a tool call of the turn's reply: name, kind, "
                "arguments, result or error, refused, duration_ms), turn.ended (latency_ms per stage, interrupted, "
                "cancel_reason; dtmf: the keys a dtmf turn pressed), call.ended (the record, its post-call "
                "analysis written or failed); ends after call.ended. Events with an `id:` are replayed after it "
                "on reconnect (Last-Event-ID).",
                "content": {
                    "text/event-stream": {
                        "example": 'id: evt_CA1_t2_caller\nevent: transcript.final\ndata: {"speaker":"caller",'
                        '"text":"what are your opening hours","turn_id":2,"turn_kind":"reply","call_id":"CA1"}\n\n'
                    }
                },
            },
            404: {"description": "No such call."},
            429: {"description": "This gateway serves its maximum of event streams."},
        },
    )
    async def call_events(call_id: str, request: Request) -> StreamingResponse:
        nonlocal open_streams
        if not (call_id.isascii() and call_id.isalnum() and len(call_id) <= 64):
            raise HTTPException(400, "invalid call id")
        if await bus.kv_get(CALL_RECORDS_BUCKET, call_id, CallRecord) is None:
            raise HTTPException(404, f"no call {call_id}")
        if open_streams >= max_streams:
            raise HTTPException(429, f"this gateway serves {max_streams} event streams at most; retry later")
        events = CallEvents(bus, call_id, request.headers.get("last-event-id", "")[:200])

        async def body() -> AsyncIterator[bytes]:
            nonlocal open_streams
            open_streams += 1
            try:
                async for chunk in events.stream(request):
                    yield chunk
            finally:
                open_streams -= 1

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)
