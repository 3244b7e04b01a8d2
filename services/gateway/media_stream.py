"""`WS /twilio/media`: one Twilio media stream, bridged to the bus.

Caller audio goes out as binary frames to the call's STT worker. Reply audio comes back
from TTS workers, possibly out of order across sentences; it is put back in (sentence,
chunk) order, and each chunk is followed by a `mark` so Twilio's echo says exactly what
the caller heard. The turn id is checked here as the last line of defence: nothing of a
cancelled or older turn is ever sent after a newer turn started.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Counter, Gauge
from starlette.websockets import WebSocket, WebSocketDisconnect

from proto import AudioFrame, FrameFlags, MarkName, call_headers, subjects
from proto.messages import (
    CallRefused,
    CallStart,
    CallStopped,
    Dtmf,
    Hangup,
    MarkPlayed,
    Message,
    PlaybackPause,
    PlaybackResume,
    ReplyAudioSent,
    Transfer,
    TurnCancel,
)
from services.gateway import twilio_protocol as tp
from services.gateway.playback_position import unplayed
from services.gateway.stream_token import InvalidStreamToken, StreamTokens
from voxline.audio import mulaw_duration_ms
from voxline.bus import Bus
from voxline.config import GatewaySettings
from voxline.telemetry import current_call_id, new_traceparent, now_us, stage_histogram

log = logging.getLogger("voxline.gateway.media")

ACTIVE_STREAMS = Gauge("voxline_gateway_active_streams", "Open Twilio media streams")
MALFORMED = Counter("voxline_gateway_malformed_frames_total", "Media stream messages that did not parse")
STALE_DROPPED = Counter("voxline_gateway_stale_frames_dropped_total", "Reply audio of cancelled or old turns dropped")
CLEARS = Counter("voxline_gateway_clears_total", "clear messages sent to Twilio")
FORWARD_LATENCY = stage_histogram("voxline_gateway_reply_forward_seconds", "TTS chunk made to the chunk sent to Twilio")

# WebSocket close codes: 1008 policy violation (bad token), 1011 cannot serve the call.
CLOSE_POLICY = 1008
CLOSE_UNAVAILABLE = 1011
START_TIMEOUT_S = 10.0

TransferCall = Callable[[str, str], Awaitable[None]]  # (call sid, number): Twilio REST <Dial>


@dataclass
class _ReplyOrder:
    """Reorders one turn's audio: sentence by sentence, chunk by chunk."""

    turn_id: int
    seq: int = 0
    chunk: int = 0
    sentence_ms: float = 0.0
    pending: dict[tuple[int, int], AudioFrame] = field(default_factory=dict)

    def push(self, frame: AudioFrame) -> list[AudioFrame]:
        self.pending[(frame.seq, frame.chunk)] = frame
        ready: list[AudioFrame] = []
        while (self.seq, self.chunk) in self.pending:
            nxt = self.pending.pop((self.seq, self.chunk))
            ready.append(nxt)
            if nxt.flags & FrameFlags.END_OF_SENTENCE:
                self.seq, self.chunk = self.seq + 1, 0
            else:
                self.chunk += 1
        return ready


class MediaStream:
    def __init__(
        self,
        ws: WebSocket,
        bus: Bus,
        settings: GatewaySettings,
        tokens: StreamTokens,
        transfer: TransferCall | None = None,
    ) -> None:
        self.ws = ws
        self.transfer = transfer
        self._end_reason = ""
        self.bus = bus
        self.settings = settings
        self.tokens = tokens
        self.call_id = ""
        self.serializer = tp.TwilioSerializer("")
        self._send_lock = asyncio.Lock()
        self._subs: list[Subscription] = []
        self._headers: dict[str, str] = {}
        self._order: _ReplyOrder | None = None
        self._cancelled_upto = 0
        # Chunks sent to Twilio whose mark has not been echoed, with when they were sent:
        # what a `clear` drops, and where in them a pause finds the caller.
        self._inflight: deque[tuple[AudioFrame, MarkName, int]] = deque()
        self._flushing: set[str] = set()  # marks Twilio echoes because of our `clear`, not playback
        self._paused_turn = 0
        self._held: list[tuple[AudioFrame, MarkName]] = []  # what a resume plays
        self._last_echo_us = 0  # when the newest played mark came back
        self._first_media_sent: set[int] = set()
        self._sentence_ms: dict[tuple[int, int], float] = {}
        self._closing = False
        self.malformed = 0

    # --- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        await self.ws.accept()
        try:
            start = await asyncio.wait_for(self._await_start(), START_TIMEOUT_S)
        except (TimeoutError, WebSocketDisconnect):
            log.warning("media stream closed before a valid start event")
            await self._close(CLOSE_POLICY, "no start event")
            return
        if start is None:
            return
        ACTIVE_STREAMS.inc()
        reason = "stream closed"
        try:
            if await self._begin(start):
                reason = await self._receive_loop()
        finally:
            ACTIVE_STREAMS.dec()
            await self._finish(reason)

    async def _await_start(self) -> tp.Start | None:
        while True:
            event = self._parse(await self.ws.receive_text())
            if isinstance(event, tp.Start):
                return await self._authorize(event)

    async def _authorize(self, start: tp.Start) -> tp.Start | None:
        agent_id = start.custom_parameters.get("agent_id", "")
        try:
            self.tokens.verify(start.custom_parameters.get("stream_token", ""), start.call_sid, agent_id)
        except InvalidStreamToken as exc:
            log.warning("refused media stream: %s", exc, extra={"call_id": start.call_sid})
            await self._close(CLOSE_POLICY, "invalid stream token")
            return None
        if start.encoding != "audio/x-mulaw" or start.sample_rate != 8000:
            log.error("unsupported media format %s/%d", start.encoding, start.sample_rate)
            await self._close(CLOSE_POLICY, "unsupported media format")
            return None
        return start

    async def _begin(self, start: tp.Start) -> bool:
        self.call_id = start.call_sid
        current_call_id.set(self.call_id)
        self.serializer = tp.TwilioSerializer(start.stream_sid)
        traceparent = new_traceparent(None, "call")
        self._headers = call_headers(self.call_id, traceparent=traceparent)
        self._subs = [
            await self.bus.subscribe_frames(subjects.audio_out(self.call_id), self._on_reply_frame),
            await self.bus.subscribe(subjects.turn_cancel(self.call_id), self._on_control),
            await self.bus.subscribe(subjects.control(self.call_id), self._on_control),
        ]
        params = {k: v for k, v in start.custom_parameters.items() if k != "stream_token"}
        request = CallStart(
            call_id=self.call_id,
            agent_id=params.get("agent_id", ""),
            stream_sid=start.stream_sid,
            call_sid=start.call_sid,
            from_number=params.get("from", ""),
            to_number=params.get("to", ""),
            custom_parameters=params,
            started_at_us=now_us(),
        )
        try:
            reply = await self.bus.request(
                subjects.CALL_START, request, timeout=self.settings.call_start_timeout_s, headers=self._headers
            )
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            reply = CallRefused(call_id=self.call_id, reason="no orchestrator answered")
        if isinstance(reply, CallRefused):
            log.error("call refused: %s", reply.reason)
            await self._close(CLOSE_UNAVAILABLE, "call refused")
            return False
        log.info("media stream started (stream %s)", start.stream_sid)
        return True

    async def _receive_loop(self) -> str:
        audio_subject = subjects.audio_in(self.call_id)
        while True:
            try:
                text = await self.ws.receive_text()
            except WebSocketDisconnect:
                return "stream closed"
            except RuntimeError:  # the socket was closed by us (Hangup, Transfer)
                return self._end_reason or "agent hung up"
            event = self._parse(text)
            if isinstance(event, tp.Media):
                frame = AudioFrame(event.payload, seq=event.chunk, timestamp_us=now_us())
                await self.bus.publish_frame(audio_subject, frame, self._headers)
            elif isinstance(event, tp.MarkEcho):
                await self._on_mark_echo(event.name)
            elif isinstance(event, tp.DtmfDigit):
                await self._publish(Dtmf(call_id=self.call_id, digit=event.digit, at_us=now_us()))
            elif isinstance(event, tp.Stop):
                return "caller hung up"

    def _parse(self, text: str) -> tp.InboundEvent | None:
        try:
            return tp.parse(text)
        except tp.ProtocolError as exc:
            self.malformed += 1
            MALFORMED.inc()
            log.error("malformed media stream message ignored: %s", exc)
            return None

    async def _finish(self, reason: str) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        self._subs = []
        if self.call_id:
            try:
                await self._publish(CallStopped(call_id=self.call_id, reason=reason, at_us=now_us()))
            except Exception as exc:
                log.error("could not report the end of the stream: %s", exc)
            log.info("media stream ended: %s", reason)
        await self._close(1000, reason)

    async def _close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            await self.ws.close(code=code, reason=reason)
        except Exception:
            pass

    async def _publish(self, message: Message) -> None:
        await self.bus.publish(subjects.gateway_events(self.call_id), message, self._headers)

    # --- reply audio -----------------------------------------------------------------

    async def _on_reply_frame(self, frame: AudioFrame, _msg: Msg) -> None:
        if frame.turn_id <= self._cancelled_upto:
            STALE_DROPPED.inc()
            return
        order = self._order
        if order is None or frame.turn_id > order.turn_id:
            order = self._order = _ReplyOrder(frame.turn_id)
        elif frame.turn_id < order.turn_id:
            STALE_DROPPED.inc()
            return
        for ready in order.push(frame):
            await self._send_chunk(order, ready)

    async def _send_chunk(self, order: _ReplyOrder, frame: AudioFrame) -> None:
        turn_end = bool(frame.flags & FrameFlags.END_OF_TURN)
        sentence_end = bool(frame.flags & FrameFlags.END_OF_SENTENCE)
        order.sentence_ms += mulaw_duration_ms(frame.payload)
        mark = MarkName(frame.turn_id, frame.seq, frame.chunk, int(order.sentence_ms), sentence_end, turn_end)
        if sentence_end:
            order.sentence_ms = 0.0
        if frame.turn_id == self._paused_turn:
            self._held.append((frame, mark))
            return
        await self._send_to_twilio([(frame, mark)])

    async def _send_to_twilio(self, chunks: list[tuple[AudioFrame, MarkName]]) -> None:
        """Each chunk goes out as media followed by its mark, so the echo says it was heard."""
        async with self._send_lock:
            for frame, mark in chunks:
                if frame.turn_id <= self._cancelled_upto or self._closing:
                    return
                if frame.payload:
                    await self.ws.send_text(self.serializer.media(frame.payload))
                await self.ws.send_text(self.serializer.mark(mark.encode()))
                self._inflight.append((frame, mark, now_us()))
        sent_us = now_us()
        for frame, _ in chunks:
            if frame.timestamp_us:
                FORWARD_LATENCY.observe(max(0, sent_us - frame.timestamp_us) / 1e6)
            if frame.payload and frame.turn_id not in self._first_media_sent:
                self._first_media_sent.add(frame.turn_id)
                await self._publish(ReplyAudioSent(call_id=self.call_id, turn_id=frame.turn_id, at_us=sent_us))

    async def _on_mark_echo(self, name: str) -> None:
        if name in self._flushing:
            self._flushing.discard(name)
            return  # Twilio flushes pending marks on `clear`: not played audio
        mark = MarkName.parse(name)
        if mark is None:
            log.warning("mark echo with a name we did not send: %r", name[:80])
            return
        while self._inflight:
            _, sent, _ = self._inflight.popleft()
            if sent == mark:
                break
        self._last_echo_us = now_us()
        await self._publish(
            MarkPlayed(
                call_id=self.call_id,
                turn_id=mark.turn_id,
                seq=mark.seq,
                chunk=mark.chunk,
                end_ms=mark.end_ms,
                sentence_end=mark.sentence_end,
                turn_end=mark.turn_end,
                at_us=now_us(),
            )
        )

    # --- orders from the orchestrator ------------------------------------------------

    async def _on_control(self, message: Message, _msg: Msg) -> None:
        if isinstance(message, TurnCancel):
            await self._cancel(message.turn_id)
        elif isinstance(message, PlaybackPause):
            await self._pause(message.turn_id)
        elif isinstance(message, PlaybackResume):
            await self._resume(message.turn_id)
        elif isinstance(message, Hangup):
            log.info("hanging up: %s", message.reason)
            await self._close(1000, message.reason)
        elif isinstance(message, Transfer):
            await self._transfer(message.to)

    async def _transfer(self, to: str) -> None:
        """Hand the call to Twilio's `<Dial>`, then leave: Twilio ends the stream anyway, and
        closing it ourselves frees the call's resources now. A failed transfer ends the call
        (logged) rather than leaving the caller on a line nobody answers."""
        masked = f"...{to[-4:]}" if len(to) > 4 else "***"
        if self.transfer is None:
            log.error("cannot transfer to %s: the Twilio REST API is not configured", masked)
            self._end_reason = "transfer unavailable"
        else:
            try:
                await self.transfer(self.call_id, to)
                log.info("call transferred to %s", masked)
                self._end_reason = "transferred"
            except Exception as exc:
                log.error("transfer to %s failed: %s", masked, exc)
                self._end_reason = "transfer failed"
        await self._close(1000, self._end_reason)

    async def _clear(self, turn_upto: int) -> list[tuple[AudioFrame, MarkName]]:
        """Send `clear` if Twilio holds audio of these turns; return the chunks it dropped."""
        dropped = [(f, m) for f, m, _ in self._inflight if f.turn_id <= turn_upto]
        if not dropped:
            return []
        async with self._send_lock:
            if self._closing:
                return []
            await self.ws.send_text(self.serializer.clear())
        CLEARS.inc()
        self._flushing.update(m.encode() for _, m, _ in self._inflight)
        self._inflight.clear()
        return dropped

    async def _pause(self, turn_id: int) -> None:
        if turn_id <= self._cancelled_upto:
            return
        self._paused_turn = turn_id
        ours = [entry for entry in self._inflight if entry[0].turn_id == turn_id]
        cleared_us = now_us()
        if await self._clear(turn_id):
            self._held[:0] = unplayed(ours, self._last_echo_us, cleared_us)
        log.info("paused turn %d (%d chunks held)", turn_id, len(self._held))

    async def _resume(self, turn_id: int) -> None:
        if self._paused_turn != turn_id:
            return
        self._paused_turn = 0
        held, self._held = self._held, []
        log.info("resuming turn %d (%d chunks)", turn_id, len(held))
        await self._send_to_twilio(held)

    async def _cancel(self, turn_id: int) -> None:
        self._cancelled_upto = max(self._cancelled_upto, turn_id)
        if self._order is not None and self._order.turn_id <= turn_id:
            self._order = None
        if self._paused_turn and self._paused_turn <= turn_id:
            self._paused_turn = 0
            self._held = []
        if await self._clear(turn_id):
            log.info("cleared Twilio's buffer for turn %d", turn_id)

    def status(self) -> dict[str, object]:
        return {"subscriptions": len(self._subs), "malformed": self.malformed}
