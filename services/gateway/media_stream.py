"""`WS /twilio/media`: one Twilio media stream, bridged to the bus.

Caller audio goes out as binary frames to the call's STT worker. Reply audio comes back
from TTS workers and goes to Twilio in the order `Playback` decides (sentence by sentence,
newest synthesis attempt, nothing of a cancelled turn), each chunk followed by a `mark` so
Twilio's echo says exactly what the caller heard. This module is the I/O around it: every
write to the socket happens under one send lock, together with the `Playback` call that
decided it, so a pause or a cancel sees exactly the chunks that are on the wire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry.trace import INVALID_SPAN, Span
from prometheus_client import Counter, Gauge
from starlette.websockets import WebSocket, WebSocketDisconnect

from proto import AudioFrame, MarkName, subjects
from proto.messages import (
    CallerAudio,
    CallerAudioRequest,
    CallRefused,
    CallStart,
    CallStopped,
    Dtmf,
    Hangup,
    MarkPlayed,
    Message,
    Order,
    PlaybackPause,
    PlaybackResume,
    ReplyAudioSent,
    SendDtmf,
    StreamResume,
    StreamSuperseded,
    Transfer,
    TurnCancel,
)
from services.common import Fence
from services.gateway import twilio_protocol as tp
from services.gateway.call_outcomes import (
    CALL_BUSY,
    LOST_REASONS,
    SEND_STALLED,
    STREAM_CLOSED,
    SUPERSEDED,
    StreamEnd,
)
from services.gateway.caller_audio import CallerAudioHistory
from services.gateway.edge_limits import MessageBudget, PendingSlot
from services.gateway.keypad import keypad_frames
from services.gateway.playback import Chunk, Cleared, Playback
from services.gateway.stream_claims import StreamClaims, StreamOutdated
from services.gateway.stream_token import InvalidStreamToken, StreamTokens
from voxline import tracing
from voxline.agents.variables import VARIABLES_PARAMETER, decode_parameter
from voxline.bus import Bus
from voxline.config import GatewaySettings
from voxline.telemetry import current_call_id, now_us, stage_histogram

log = logging.getLogger("voxline.gateway.media")

ACTIVE_STREAMS = Gauge("voxline_gateway_active_streams", "Open Twilio media streams")
MALFORMED = Counter("voxline_gateway_malformed_frames_total", "Media stream messages that did not parse")
CLEARS = Counter("voxline_gateway_clears_total", "clear messages sent to Twilio")
REFUSED = Counter("voxline_gateway_refused_calls_total", "Media streams whose call was refused", ["reason"])
SEND_TIMEOUTS = Counter("voxline_gateway_send_timeouts_total", "Media streams closed because a write to Twilio stalled")
RESUMES = Counter("voxline_gateway_stream_resumes_total", "New media streams of calls whose stream broke", ["outcome"])
REFUSED_STREAMS = Counter(
    "voxline_gateway_refused_streams_total",
    "Media WebSockets refused or closed at the edge, by why (bad token, replay, superseded, limits)",
    ["reason"],
)
FORWARD_LATENCY = stage_histogram("voxline_gateway_reply_forward_seconds", "TTS chunk made to the chunk sent to Twilio")

# WebSocket close codes: 1008 policy violation (bad token), 1011 cannot serve the call.
CLOSE_POLICY = 1008
CLOSE_UNAVAILABLE = 1011
MESSAGES_BEFORE_START = 4  # Twilio sends `connected`, then `start`: anything more is not Twilio

TransferCall = Callable[[str, str], Awaitable[None]]  # (call sid, number): Twilio REST <Dial>
RecordEnd = Callable[[str, StreamEnd], Awaitable[None]]  # how a call's stream ended, for any gateway to read
RESUME_PARAMETER = "resume"  # <Parameter> of a stream the <Connect action> handed out again
RESUME_RETRY_S = 0.25  # between asks to the call's owner, who may be taking the call over


class StreamStatus(msgspec.Struct):
    subscriptions: int  # per-call bus subscriptions this stream holds
    malformed: int  # messages from Twilio that did not parse


class MediaStream:
    def __init__(
        self,
        ws: WebSocket,
        bus: Bus,
        settings: GatewaySettings,
        tokens: StreamTokens,
        transfer: TransferCall | None = None,
        record_end: RecordEnd | None = None,
        clock: Callable[[], int] = now_us,
        claims: StreamClaims | None = None,
        pending: PendingSlot | None = None,
    ) -> None:
        self.ws = ws
        self.claims = claims  # None: one gateway's unit tests, where no other stream can exist
        self.pending = pending  # our place among unauthenticated sockets, given up at `start`
        self.budget = MessageBudget(settings.ws_messages_per_s, settings.ws_messages_burst)
        self._issued_us = 0  # our stream token's issue time: a newer token's stream replaces us
        self._replaced = ""  # the stream of the call we replaced, if any
        self._superseded = False
        self.record_end = record_end
        self.clock = clock  # µs: when chunks went out, echoes came back and clears were sent
        self.transfer = transfer
        self._end_reason = ""
        self._transfer_outcome: asyncio.Future[str] | None = None  # why the stream ends, once a transfer is under way
        self.close_code, self.close_reason = 0, ""  # how we closed the stream: the <Connect action> answers by it
        self._fence = Fence()
        self.bus = bus
        self.settings = settings
        self.tokens = tokens
        self.call_id = ""
        self.serializer = tp.TwilioSerializer("")
        self.playback = Playback()
        self._send_lock = asyncio.Lock()  # every write to Twilio, with the decision behind it
        self._subs: list[Subscription] = []
        self._caller_audio = CallerAudioHistory()
        self._headers: dict[str, str] = {}
        self._span: Span = INVALID_SPAN  # the call's trace root: the stream, start to end
        self._closing = False
        self.malformed = 0

    # --- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        await self.ws.accept()
        try:
            start = await asyncio.wait_for(self._await_start(), self.settings.stream_start_timeout_s)
        except (TimeoutError, WebSocketDisconnect, RuntimeError):
            REFUSED_STREAMS.labels(reason="no start").inc()
            log.warning("media stream closed before a valid start event")
            await self._close(CLOSE_POLICY, "no start event")
            return
        finally:
            if self.pending is not None:
                self.pending.release()
        if start is None:
            return
        ACTIVE_STREAMS.inc()
        reason = STREAM_CLOSED
        try:
            if await self._begin(start):
                reason = await self._receive_loop()
        finally:
            ACTIVE_STREAMS.dec()
            await self._finish(reason)

    async def _await_start(self) -> tp.Start | None:
        for _ in range(MESSAGES_BEFORE_START):
            event = self._parse(await self._receive_text())
            if isinstance(event, tp.Start):
                return await self._authorize(event)
        REFUSED_STREAMS.labels(reason="no start").inc()
        log.warning("media stream sent %d messages without a start: closed", MESSAGES_BEFORE_START)
        await self._close(CLOSE_POLICY, "no start event")
        return None

    async def _authorize(self, start: tp.Start) -> tp.Start | None:
        meta = start.start
        agent_id = meta.custom_parameters.get("agent_id", "")
        token = meta.custom_parameters.get("stream_token", "")
        try:
            grant = await self.tokens.verify(token, meta.call_sid, agent_id, meta.account_sid)
        except InvalidStreamToken as exc:
            REFUSED_STREAMS.labels(reason="invalid token").inc()
            log.warning("refused media stream: %s", exc, extra={"call_id": meta.call_sid})
            await self._close(CLOSE_POLICY, "invalid stream token")
            return None
        if self.claims is not None:
            try:
                self._replaced = await self.claims.claim(meta.call_sid, meta.stream_sid, grant.issued_us)
            except StreamOutdated as exc:
                REFUSED_STREAMS.labels(reason="outdated").inc()
                log.warning("refused media stream: %s", exc, extra={"call_id": meta.call_sid})
                await self._close(CLOSE_POLICY, "the call has a newer stream")
                return None
            except Exception as exc:
                log.error("could not claim the call for this stream: %r", exc, extra={"call_id": meta.call_sid})
                await self._close(CLOSE_UNAVAILABLE, "call refused")
                return None
        self._issued_us = grant.issued_us
        fmt = meta.media_format
        if fmt.encoding != "audio/x-mulaw" or fmt.sample_rate != 8000:
            log.error("unsupported media format %s/%d", fmt.encoding, fmt.sample_rate)
            await self._close(CLOSE_POLICY, "unsupported media format")
            return None
        return start

    async def _begin(self, start: tp.Start) -> bool:
        meta = start.start
        self.call_id = meta.call_sid
        current_call_id.set(self.call_id)
        self.serializer = tp.TwilioSerializer(meta.stream_sid)
        self._span = tracing.start_span("media stream", root=True, call_id=self.call_id)
        self._headers = tracing.headers_for(self._span, self.call_id)
        self._subs = [
            await self.bus.subscribe_frames(subjects.audio_out(self.call_id), self._on_reply_frame),
            await self.bus.subscribe(subjects.turn_cancel(self.call_id), self._on_control),
            await self.bus.subscribe(subjects.control(self.call_id), self._on_control),
            await self.bus.subscribe(subjects.caller_audio(self.call_id), self._on_caller_audio_request),
            await self.bus.subscribe(subjects.stream_superseded(self.call_id), self._on_superseded),
        ]
        params = {k: v for k, v in meta.custom_parameters.items() if k not in ("stream_token", VARIABLES_PARAMETER)}
        request = CallStart(
            call_id=self.call_id,
            agent_id=params.get("agent_id", ""),
            stream_sid=meta.stream_sid,
            call_sid=meta.call_sid,
            from_number=params.get("from", ""),
            to_number=params.get("to", ""),
            direction="outbound" if params.get("direction") == "outbound" else "inbound",
            custom_parameters=params,
            variables=decode_parameter(meta.custom_parameters.get(VARIABLES_PARAMETER, "")),
            started_at_us=now_us(),
            gateway_id=self.settings.instance_id,
        )
        # A stream that replaced another of the call goes on with the call, like a resume:
        # the owner is told which stream it now has, so the old one's end is old news.
        resumed = params.get(RESUME_PARAMETER) == "1" or bool(self._replaced)
        if resumed:
            reply = await self._resume_call(meta.stream_sid)
        else:
            try:
                with tracing.span("call start", parent=self._span, call_id=self.call_id):
                    reply = await self.bus.request(
                        subjects.CALL_START, request, timeout=self.settings.call_start_timeout_s, headers=self._headers
                    )
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                # No orchestrator in the queue group: each one at capacity left it (or none runs).
                reply = CallRefused(call_id=self.call_id, reason="no orchestrator answered", busy=True)
        if isinstance(reply, CallRefused):
            REFUSED.labels(reason=CALL_BUSY if reply.busy else "refused").inc()
            log.error("call refused%s: %s", " (busy)" if reply.busy else "", reply.reason)
            await self._close(CLOSE_UNAVAILABLE, CALL_BUSY if reply.busy else "call refused")
            return False
        log.info("media stream %s (stream %s)", "resumed" if resumed else "started", meta.stream_sid)
        if self._replaced:
            superseded = StreamSuperseded(call_id=self.call_id, stream_sid=meta.stream_sid, issued_us=self._issued_us)
            await self.bus.publish(subjects.stream_superseded(self.call_id), superseded, self._headers)
        return True

    async def _resume_call(self, stream_sid: str) -> Message:
        """A new stream of a call whose stream broke: only the call's owner can take it back.
        No owner may answer for a moment (it is being taken over after a death too): ask
        again until `stream_resume_timeout_s`."""
        resume = StreamResume(
            call_id=self.call_id, stream_sid=stream_sid, gateway_id=self.settings.instance_id, at_us=now_us()
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.stream_resume_timeout_s
        with tracing.span("stream resume", parent=self._span, call_id=self.call_id):
            while True:
                remaining = deadline - loop.time()
                try:
                    reply = await self.bus.request(
                        subjects.stream_resume(self.call_id), resume, timeout=max(0.1, remaining), headers=self._headers
                    )
                    break
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    if loop.time() + RESUME_RETRY_S >= deadline:
                        reply = CallRefused(call_id=self.call_id, reason="no orchestrator owns the call any more")
                        break
                    await asyncio.sleep(RESUME_RETRY_S)
        RESUMES.labels(outcome="refused" if isinstance(reply, CallRefused) else "accepted").inc()
        return reply

    async def _receive_loop(self) -> str:
        audio_subject = subjects.audio_in(self.call_id)
        while True:
            try:
                text = await self._receive_text()
            except WebSocketDisconnect:  # Twilio's answer to our own close is one too
                return (self._end_reason or "agent hung up") if self._closing else STREAM_CLOSED
            except RuntimeError:  # the socket was closed by us (Hangup, Transfer)
                return self._end_reason or "agent hung up"
            if not self.budget.take():
                REFUSED_STREAMS.labels(reason="message rate").inc()
                log.warning("media stream sent more than its message budget: closed")
                await self._close(CLOSE_POLICY, "message rate exceeded")
                return "message rate exceeded"
            event = self._parse(text)
            if isinstance(event, tp.Media):
                frame = AudioFrame(event.media.payload, seq=event.media.chunk, timestamp_us=now_us())
                self._caller_audio.add(frame)
                await self.bus.publish_frame(audio_subject, frame)  # no headers: 50 a second
            elif isinstance(event, tp.MarkEcho):
                await self._on_mark_echo(event.mark.name)
            elif isinstance(event, tp.Dtmf):
                await self._publish(Dtmf(call_id=self.call_id, digit=event.dtmf.digit, at_us=now_us()))
            elif isinstance(event, tp.Stop):
                if self._transfer_outcome is not None:  # Twilio stops the stream our redirect took over
                    return await self._transfer_outcome
                return "caller hung up"

    async def _receive_text(self) -> str:
        """The next message's text; a binary frame (Twilio sends none) reads as '' and is
        counted as malformed instead of raising from starlette's receive_text()."""
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        text = message.get("text")
        return text if isinstance(text, str) else ""

    def _parse(self, text: str) -> tp.InboundEvent | None:
        try:
            return self.serializer.deserialize(text)
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
                stopped = CallStopped(
                    call_id=self.call_id,
                    reason=reason,
                    at_us=now_us(),
                    lost=reason in LOST_REASONS,
                    stream_sid=self.serializer.stream_sid,
                )
                await self._publish(stopped)
            except Exception as exc:
                log.error("could not report the end of the stream: %s", exc)
            log.info("media stream ended: %s", reason)
        self._span.set_attribute("end_reason", reason)
        self._span.end()
        await self._close(1000, reason)

    async def _close(self, code: int, reason: str) -> None:
        """How the stream ended is shared before the socket closes: Twilio requests the
        `<Connect action>` the moment it does, possibly from another gateway."""
        if self._closing:
            return
        self._closing = True
        self.close_code, self.close_reason = code, reason
        # A superseded stream's end is not the call's: the newer stream's will be recorded.
        if self.call_id and self.record_end is not None and not self._superseded:
            try:
                await asyncio.wait_for(self.record_end(self.call_id, StreamEnd(code, reason)), 1.0)
            except Exception as exc:
                log.error("could not record how the stream ended: %r", exc)
        try:
            await asyncio.wait_for(self.ws.close(code=code, reason=reason), self.settings.ws_send_timeout_s)
        except Exception:
            pass

    async def _write(self, text: str) -> bool:
        """One message to Twilio; False when the socket is gone or stalled. A write that
        does not complete within `ws_send_timeout_s` means the link is stuck: the stream is
        closed as lost (Twilio may come back through the `<Connect action>`) instead of
        holding the send lock, and a `clear`, behind it."""
        try:
            await asyncio.wait_for(self.ws.send_text(text), self.settings.ws_send_timeout_s)
            return True
        except TimeoutError:
            SEND_TIMEOUTS.inc()
            log.error("a write to Twilio stalled for %.1fs: closing the stream", self.settings.ws_send_timeout_s)
            self._end_reason = SEND_STALLED
            asyncio.get_running_loop().create_task(self._close(CLOSE_UNAVAILABLE, SEND_STALLED))
        except Exception as exc:
            log.warning("write to Twilio failed: %r", exc)
        return False

    async def _publish(self, message: Message) -> None:
        await self.bus.publish(subjects.gateway_events(self.call_id), message, self._headers)

    # --- reply audio -----------------------------------------------------------------

    async def _on_reply_frame(self, frame: AudioFrame, _msg: Msg) -> None:
        arrived_ns = time.time_ns()
        async with self._send_lock:
            sent, first_audio = await self._send(self.playback.push(frame))
        sent_us = now_us()
        for chunk in sent:
            if chunk.frame.timestamp_us:
                FORWARD_LATENCY.observe(max(0, sent_us - chunk.frame.timestamp_us) / 1e6)
        await self._report_first_audio(first_audio, arrived_ns)

    async def _send(self, chunks: list[Chunk]) -> tuple[list[Chunk], list[int]]:
        """Each chunk goes out as media followed by its mark, so the echo says it was heard.
        The caller holds the send lock; a cancel (which does not wait for it) stops the rest.
        Return what went out, and the turns whose first audio it was."""
        sent: list[Chunk] = []
        first_audio: list[int] = []
        for chunk in chunks:
            if self._closing or not self.playback.may_send(chunk.frame):
                break
            if chunk.frame.payload and not await self._write(self.serializer.media(chunk.frame.payload)):
                break
            if not await self._write(self.serializer.mark(chunk.mark.encode())):
                break
            if self.playback.sent(chunk, self.clock()):
                first_audio.append(chunk.frame.turn_id)
            sent.append(chunk)
        return sent, first_audio

    async def _report_first_audio(self, turns: list[int], since_ns: int) -> None:
        """`since_ns`: when the work that sent it began (the frame's arrival, a resume)."""
        for turn_id in turns:
            first = tracing.start_span(
                "first media", parent=self._span, call_id=self.call_id, turn_id=turn_id, start_ns=since_ns
            )
            await self._publish(ReplyAudioSent(call_id=self.call_id, turn_id=turn_id, at_us=now_us()))
            first.end()

    async def _send_clear(self, cleared: Cleared) -> None:
        """The caller holds the send lock. A newer turn's audio that was on its way behind
        the cleared one goes out again at once, ahead of the rest of that turn."""
        if not await self._write(self.serializer.clear()):
            return
        CLEARS.inc()
        await self._send(cleared.resend)

    async def _report_heard(self, cleared: Cleared | None) -> None:
        """What the caller heard up to a clear, as if Twilio had echoed it: the echoes that
        follow a clear cannot tell played from flushed (see `Playback.mark_echoed`)."""
        for mark in cleared.heard if cleared else []:
            await self._report_played(mark)

    async def _on_mark_echo(self, name: str) -> None:
        mark = self.playback.mark_echoed(name, self.clock())
        if mark is not None:
            await self._report_played(mark)

    async def _report_played(self, mark: MarkName) -> None:
        await self._publish(
            MarkPlayed(
                call_id=self.call_id,
                turn_id=mark.turn_id,
                seq=mark.seq,
                chunk=mark.chunk,
                end_ms=mark.end_ms,
                sentence_end=mark.sentence_end,
                turn_end=mark.turn_end,
                at_us=self.clock(),
            )
        )

    async def _on_caller_audio_request(self, message: Message, msg: Msg) -> None:
        """A new STT worker asks for what its predecessor heard but never transcribed."""
        if not isinstance(message, CallerAudioRequest) or not msg.reply:
            log.warning("ignored %s on %s", type(message).__name__, msg.subject)
            return
        frames = self._caller_audio.since(message.since_us)
        log.info("handing %d frame(s) of caller audio to the call's new stt worker", len(frames))
        await self.bus.respond(msg, CallerAudio(call_id=self.call_id, frames=frames))

    async def _on_superseded(self, message: Message, _msg: Msg) -> None:
        """A newer stream of the call took it (on this gateway or another): this one is
        stale (a socket whose link broke) or was never Twilio's, and must not serve the call."""
        if not isinstance(message, StreamSuperseded) or message.stream_sid == self.serializer.stream_sid:
            return
        if message.issued_us <= self._issued_us:
            return
        REFUSED_STREAMS.labels(reason="superseded").inc()
        log.warning("media stream superseded by stream %s: closed", message.stream_sid)
        self._superseded = True
        self._end_reason = SUPERSEDED
        await self._close(CLOSE_POLICY, SUPERSEDED)

    # --- orders from the orchestrator ------------------------------------------------

    async def _on_control(self, message: Message, msg: Msg) -> None:
        if isinstance(message, Order) and not self._fence.admits(self.call_id, message.epoch):
            return  # an order of an owner that was replaced: the call is not its to run
        if isinstance(message, TurnCancel):
            with tracing.incoming(msg.headers):  # a clear's span is the orchestrator's child
                await self._cancel(message.turn_id)
        elif isinstance(message, PlaybackPause):
            with tracing.incoming(msg.headers):
                await self._pause(message.turn_id)
        elif isinstance(message, PlaybackResume):
            await self._resume(message.turn_id)
        elif isinstance(message, Hangup):
            log.info("hanging up: %s", message.reason)
            await self._close(1000, message.reason)
        elif isinstance(message, Transfer):
            await self._transfer(message.to)
        elif isinstance(message, SendDtmf):
            log.info("pressing %d key(s) as turn %d", len(message.digits), message.turn_id)
            for frame in keypad_frames(message.turn_id, message.digits):  # played like reply audio, marked
                await self._on_reply_frame(frame, msg)

    async def _transfer(self, to: str) -> None:
        """Hand the call to Twilio's `<Dial>`, then leave: Twilio ends the stream anyway, and
        closing it ourselves frees the call's resources now. A failed transfer ends the call
        (logged) rather than leaving the caller on a line nobody answers."""
        masked = f"...{to[-4:]}" if len(to) > 4 else "***"
        self._transfer_outcome = asyncio.get_running_loop().create_future()
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
        # A `stop` that came meanwhile was the redirect taking effect, or else the caller leaving.
        self._transfer_outcome.set_result("transferred" if self._end_reason == "transferred" else "caller hung up")
        await self._close(1000, self._end_reason)

    async def _pause(self, turn_id: int) -> None:
        # Under the send lock: the chunks held are exactly those sent before the `clear`.
        async with self._send_lock:
            cleared = None if self._closing else self.playback.pause(turn_id, self.clock())
            if cleared is not None:
                with tracing.span("clear", call_id=self.call_id, turn_id=turn_id, attributes={"cause": "pause"}):
                    await self._send_clear(cleared)
        log.info("paused turn %d (%d chunks held)", turn_id, len(self.playback.held))
        await self._report_heard(cleared)

    async def _resume(self, turn_id: int) -> None:
        resumed_ns = time.time_ns()
        async with self._send_lock:
            held = self.playback.resume(turn_id)
            if held:
                log.info("resuming turn %d (%d chunks)", turn_id, len(held))
            _, first_audio = await self._send(held)
        await self._report_first_audio(first_audio, resumed_ns)

    async def _cancel(self, turn_id: int) -> None:
        self.playback.cancel(turn_id)  # at once: a send under way stops at its next chunk
        async with self._send_lock:
            cleared = None if self._closing else self.playback.flush(turn_id, self.clock())
            if cleared is not None:
                with tracing.span("clear", call_id=self.call_id, turn_id=turn_id, attributes={"cause": "cancel"}):
                    await self._send_clear(cleared)
                log.info("cleared Twilio's buffer for turn %d", turn_id)
        await self._report_heard(cleared)

    def status(self) -> StreamStatus:
        return StreamStatus(subscriptions=len(self._subs), malformed=self.malformed)
