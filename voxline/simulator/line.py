"""The live phone line: one Media Streams socket driven exactly like Twilio drives it.

Three tasks share the socket. The sender emits a 20 ms frame at every absolute deadline
t0 + n*20 ms (speech when the caller talks, mu-law silence otherwise), because a real
line never goes quiet and a gateway's VAD and timers depend on that. The receiver feeds
the playback model. The player sleeps until the next mark falls due and echoes it, so
echoes leave at the moment playback reaches them, not at the next 20 ms tick.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from voxline.audio import FRAME_MS, FRAME_SAMPLES, MULAW_SILENCE
from voxline.simulator.ivr import KeypadEar
from voxline.simulator.line_noise import LineNoise
from voxline.simulator.playback import Chunk, PendingMark, PlaybackBuffer
from voxline.simulator.twilio_stream import (
    ProtocolError,
    TwilioStream,
    encode,
    parse_gateway_message,
)
from voxline.simulator.voice import SpeechFrames

# What Twilio does when a stream ends under the caller (`<Connect action>`): a new socket, the
# stream's messages on it, and its `start` parameters; None when the call does not go on.
NewStream = tuple[ClientConnection, TwilioStream, dict[str, str]]
FollowAction = Callable[[], Awaitable[NewStream | None]]

SILENT_FRAME = bytes([MULAW_SILENCE]) * FRAME_SAMPLES
SILENT_FRAME_B64 = base64.b64encode(SILENT_FRAME).decode("ascii")
MALFORMED_JSON = '{"event": "media", "media": {"payload": '


@dataclass
class SpeechLog:
    """When an utterance's frames went out: first frame, first/last voiced frame."""

    frames: SpeechFrames
    first_frame: float | None = None
    onset: float | None = None
    end: float | None = None
    last_frame: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _next: int = 0


class PhoneLine:
    def __init__(self, ws: ClientConnection, stream: TwilioStream, clock: Callable[[], float] = time.monotonic) -> None:
        self.ws = ws
        self.stream = stream
        self.clock = clock
        self.playback = PlaybackBuffer(clock)
        self.t0 = 0.0
        self.closed = False
        self.closed_by_gateway = False
        self.malformed_after_ms: int | None = None
        self.noise: LineNoise | None = None  # bursts and echo on the caller's side
        # Keypad tones in the agent's audio (an IVR's ear): only when the script plays an IVR,
        # since a load test's hundreds of calls need not spend CPU on filters.
        self.keypad: KeypadEar | None = None
        self.media_received = 0
        self.marks_received = 0
        self.clears = 0
        self.max_turn_seen = -1
        self.echoed: list[PendingMark] = []
        self.gateway_errors: list[str] = []
        # How late each frame left vs its deadline, in whole ms -> frames: a loaded
        # simulator sends late, which a reader of its numbers must be able to see.
        self.send_lateness_ms: dict[int, int] = {}
        self._speech: deque[SpeechLog] = deque()
        self._controls: deque[tuple[str, str]] = deque()
        self._send_lock = asyncio.Lock()
        self._stopped = False  # `stop` is sent: Twilio sends nothing after it, not even a mark echo
        self._changed = asyncio.Event()
        self._wake_player = asyncio.Event()
        self._sending = True
        self._tasks: list[asyncio.Task[None]] = []
        # Set by the caller: followed when the gateway side ends the stream. While it runs,
        # no frame goes out (there is no stream) and the caller's speech waits.
        self.follow_action: FollowAction | None = None
        self._following: asyncio.Task[None] | None = None
        self._frames_at_stream_start = 0  # media timestamps restart at 0 on a new stream
        self._frames_sent = 0

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, custom_parameters: dict[str, str]) -> None:
        await self._emit(self.stream.connected)
        await self._emit(lambda: self.stream.start(custom_parameters))
        self.t0 = self.clock()
        self._tasks = [
            asyncio.create_task(self._sender(), name="sim-sender"),
            asyncio.create_task(self._receiver(), name="sim-receiver"),
            asyncio.create_task(self._player(), name="sim-player"),
        ]

    async def hang_up(self) -> None:
        """Stop the frames, say `stop` like Twilio does on hang-up, and close."""
        self._sending = False
        if self._following is not None:
            self._following.cancel()
            await asyncio.gather(self._following, return_exceptions=True)
        by_name = {task.get_name(): task for task in self._tasks}
        if "sim-sender" in by_name:
            await asyncio.gather(by_name["sim-sender"], return_exceptions=True)
        if "sim-player" in by_name:  # nothing may follow `stop`, not even a mark echo
            by_name["sim-player"].cancel()
            await asyncio.gather(by_name["sim-player"], return_exceptions=True)
        if not self.closed:
            await self._emit(self.stream.stop, last=True)
            self.closed = True
            await self.ws.close()
        if "sim-receiver" in by_name:
            await asyncio.gather(by_name["sim-receiver"], return_exceptions=True)
        self.playback.finish()

    # -- what the caller does -----------------------------------------------------------

    def speak(self, frames: SpeechFrames) -> SpeechLog:
        log = SpeechLog(frames)
        if not frames.frames:
            log.done.set()
        else:
            self._speech.append(log)
        return log

    def press(self, digit: str) -> None:
        self._controls.append(("dtmf", digit))

    def inject_malformed(self) -> None:
        self._controls.append(("malformed", ""))

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until predicate holds (re-checked on every event), False on timeout."""
        deadline = self.clock() + timeout
        while True:
            if predicate():
                return True
            self._changed.clear()
            remaining = deadline - self.clock()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                return predicate()

    async def wait_silence(self, quiet_s: float, timeout: float) -> bool:
        """Wait until the agent has been silent for `quiet_s`, as a caller waits for a pause
        before talking: a reply that goes on after a short gap (the rest of an answer said
        by the orchestrator that took the call over) is listened to, not talked over."""
        deadline = self.clock() + timeout
        while not self.closed:
            self._changed.clear()  # before reading the state: an event after it wakes the wait
            now = self.clock()
            since = self.playback.quiet_since(now)
            if since is not None and now - since >= quiet_s:
                return True
            if now >= deadline:
                return False
            edge = since if since is not None else (self.playback.playing_until() or now)
            try:
                async with asyncio.timeout(max(0.0, min(deadline, edge + quiet_s) - now)):
                    await self._changed.wait()
            except TimeoutError:
                pass
        return False

    async def wait_turn_finished(self, baseline: int, since: float, timeout: float) -> bool:
        return await self.wait_for(lambda: self.turn_finished_after(baseline, since) or self.closed, timeout)

    async def wait_reply_started(self, since: float, timeout: float) -> Chunk | None:
        await self.wait_for(lambda: self.first_reply_chunk(since) is not None or self.closed, timeout)
        return self.first_reply_chunk(since)

    async def wait_spoken(self, log: SpeechLog, timeout: float) -> bool:
        return await self.wait_for(lambda: log.done.is_set() or self.closed, timeout)

    async def sleep_until(self, when: float) -> None:
        await asyncio.sleep(max(0.0, when - self.clock()))

    def first_reply_chunk(self, since: float) -> Chunk | None:
        return next((c for c in self.playback.chunks if c.received_at >= since), None)

    # -- tasks --------------------------------------------------------------------------

    async def _emit(self, build: Callable[[], dict[str, Any] | str], last: bool = False) -> None:
        """Build and send under one lock, so sequence numbers go out in order. Nothing goes
        after the `last` message (`stop`): a mark echoed by the receiver after it would be
        read by nobody, and would hold the gateway's socket paused so the closing handshake
        never completes (seen: a hang-up took the websockets close timeout, 10 s)."""
        if self._following is not None:
            return  # the stream is gone; its echoes and keys go nowhere
        async with self._send_lock:
            if self._stopped:
                return
            self._stopped = last
            message = build()
            try:
                await self.ws.send(message if isinstance(message, str) else encode(message))
            except ConnectionClosed:
                self._mark_closed()

    def _mark_closed(self) -> None:
        if self._following is not None:
            return  # a new stream is on its way, or the call ends when it does not come
        if not self.closed and self._sending and self.follow_action is not None:
            self._following = asyncio.create_task(self._follow(self.follow_action), name="sim-follow")
            return
        if not self.closed:
            self.closed = True
            self.closed_by_gateway = True
        self._changed.set()

    async def _follow(self, follow_action: FollowAction) -> None:
        """The stream ended under the caller: Twilio's `<Connect action>`, then a new stream
        on a new socket (the same call, a new streamSid), or the end of the line."""
        old_receiver = next((t for t in self._tasks if t.get_name() == "sim-receiver"), None)
        if old_receiver is not None and old_receiver is not asyncio.current_task():
            await asyncio.gather(old_receiver, return_exceptions=True)
        self.playback.stream_lost()
        new = await follow_action()
        if new is None or not self._sending:
            self._following = None
            self.closed = True
            self.closed_by_gateway = True
            self._changed.set()
            return
        ws, stream, parameters = new
        async with self._send_lock:
            self.ws, self.stream = ws, stream
            try:
                await ws.send(encode(stream.connected()))
                await ws.send(encode(stream.start(parameters)))
            except ConnectionClosed:
                pass
            self._frames_at_stream_start = self._frames_sent
        self._tasks = [t for t in self._tasks if t.get_name() != "sim-receiver"]
        self._tasks.append(asyncio.create_task(self._receiver(), name="sim-receiver"))
        self._following = None
        self._changed.set()

    def _next_frame(self) -> tuple[str, SpeechLog | None, bool]:
        """The next frame's base64 payload, whose utterance it belongs to, and if voiced."""
        if not self._speech:
            return SILENT_FRAME_B64, None, False
        log = self._speech[0]
        i = log._next
        log._next += 1
        if log._next >= len(log.frames.frames):
            self._speech.popleft()
        return log.frames.frames_b64[i], log, log.frames.voiced[i]

    async def _sender(self) -> None:
        n = 0
        lateness = self.send_lateness_ms
        while self._sending and not self.closed:
            n += 1
            deadline = self.t0 + n * FRAME_MS / 1000.0
            await self.sleep_until(deadline)
            if not self._sending:
                break
            if self._following is not None:
                continue  # no stream: nothing to send on, and the caller's speech waits
            self._frames_sent = n
            payload, log, voiced = self._next_frame()
            if self.noise is not None:
                payload = self.noise.mix(payload, self.clock(), caller_speaking=log is not None)
            stream_ms = (n - 1 - self._frames_at_stream_start) * FRAME_MS
            await self._emit(partial(self.stream.media_json, payload, stream_ms))
            now = self.clock()
            late = int((now - deadline) * 1000.0)
            lateness[late] = lateness.get(late, 0) + 1
            if log is not None:
                self._note_speech(log, now, voiced)
            if self.malformed_after_ms is not None and n * FRAME_MS >= self.malformed_after_ms:
                self.malformed_after_ms = None
                self.inject_malformed()
            while self._controls:
                kind, value = self._controls.popleft()
                if kind == "dtmf":
                    await self._emit(partial(self.stream.dtmf, value))
                else:
                    await self._emit(lambda: MALFORMED_JSON)
                    await self._emit(partial(self.stream.broken_media, n * FRAME_MS))

    def _note_speech(self, log: SpeechLog, now: float, voiced: bool) -> None:
        if log.first_frame is None:
            log.first_frame = now
        if voiced:
            log.onset = now if log.onset is None else log.onset
            log.end = now
        if log._next >= len(log.frames.frames):
            log.last_frame = now
            log.done.set()
            self._changed.set()

    async def _receiver(self) -> None:
        try:
            async for raw in self.ws:
                await self._echo(self._handle(raw))
                self._wake_player.set()
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self._mark_closed()

    def _handle(self, raw: str | bytes) -> list[PendingMark]:
        """Apply one gateway message to the playback model; returns marks to echo now."""
        try:
            msg = parse_gateway_message(raw)
        except ProtocolError as exc:
            self.gateway_errors.append(str(exc))
            return []
        if msg.stream_sid != self.stream.stream_sid:
            self.gateway_errors.append(f"{msg.event} for streamSid {msg.stream_sid!r}")
            return []
        if msg.event == "media":
            self.media_received += 1
            chunk = self.playback.add_audio(msg.payload)
            if self.keypad is not None:
                self.keypad.heard(chunk, msg.payload)
            if self.noise is not None:
                self.noise.heard(chunk, msg.payload)
            return []
        if msg.event == "mark":
            self.marks_received += 1
            echoes = self.playback.add_mark(msg.mark_name)
            parsed = self.playback.marks[-1].parsed
            if parsed is not None:
                self.max_turn_seen = max(self.max_turn_seen, parsed.turn_id)
            return echoes
        self.clears += 1
        return self.playback.clear()

    async def _player(self) -> None:
        while True:
            self._wake_player.clear()
            await self._echo(self.playback.due_marks())
            due = self.playback.next_due()
            timeout = None if due is None else max(0.0, due - self.clock())
            # Not asyncio.wait_for: on Python 3.11 a cancel that lands as the event is set is
            # lost (CPython gh-86296), and hang_up's cancel of this loop then waits for good.
            try:
                async with asyncio.timeout(timeout):
                    await self._wake_player.wait()
            except TimeoutError:
                pass

    async def _echo(self, marks: list[PendingMark]) -> None:
        for mark in marks:
            await self._emit(partial(self.stream.mark, mark.name))
            self.echoed.append(mark)
        if marks:
            self._changed.set()

    def turn_finished_after(self, baseline: int, since: float) -> bool:
        """A reply newer than `baseline` fully played (or was cleared after `since`)."""
        for mark in self.echoed:
            parsed = mark.parsed
            if parsed is None or not parsed.turn_end or parsed.turn_id <= baseline:
                continue
            if not mark.by_clear or (mark.echoed_at or 0.0) >= since:
                return True
        return False
