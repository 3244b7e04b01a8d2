"""The TTS worker: synthesizes sentences from a queue group, one asyncio task per
sentence, and streams each as fixed-length audio chunks to the call's audio.out subject.

The gateway plays a turn's audio in (seq, chunk) order and moves to the next sentence
only on an END_OF_SENTENCE frame, so every sentence this worker accepts ends with one,
even when its text is empty or synthesis fails; otherwise the caller would hear silence
for the rest of the reply. Only a cancelled turn gets no closing frame: the gateway drops
everything of it anyway.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Gauge

from proto import subjects
from proto.audio_frame import AudioFrame, FrameFlags
from proto.messages import CallEnded, Message, SentenceSynthesized, Synthesize, TtsError, TurnCancel
from services.common import (
    STOP_GRACE_S,
    ProviderError,
    TurnTasks,
    call_context,
    close_stream,
    outgoing_headers,
    unsubscribe_quietly,
)
from services.tts.providers import TtsProvider, make_provider
from voxline.audio import TELEPHONY_RATE
from voxline.bus import Bus
from voxline.config import TtsSettings
from voxline.telemetry import now_us, stage_histogram

log = logging.getLogger("voxline.tts")

ACTIVE_SENTENCES = Gauge("voxline_tts_active_sentences", "Sentences this TTS worker is synthesizing.")
FIRST_AUDIO = stage_histogram(
    "voxline_tts_first_audio_seconds", "Synthesis request sent to the sentence's first audio chunk published."
)


def chunk_bytes_for(chunk_ms: int) -> int:
    return max(1, TELEPHONY_RATE * chunk_ms // 1000)


class Chunker:
    """Cuts a provider's arbitrary pieces into chunks of `chunk_bytes`.

    A full chunk is released only once a byte beyond it has arrived, so whatever is left
    when the provider finishes is the sentence's last chunk (1..chunk_bytes bytes), the
    one that must carry END_OF_SENTENCE, and no empty frame is needed after real audio.
    """

    def __init__(self, chunk_bytes: int) -> None:
        self.chunk_bytes = chunk_bytes
        self._buf = bytearray()

    def push(self, piece: bytes) -> list[bytes]:
        self._buf += piece
        ready: list[bytes] = []
        while len(self._buf) > self.chunk_bytes:
            ready.append(bytes(self._buf[: self.chunk_bytes]))
            del self._buf[: self.chunk_bytes]
        return ready

    def finish(self) -> bytes:
        """The last chunk; empty only if no audio came at all."""
        last, self._buf = bytes(self._buf), bytearray()
        return last


def frame_flags(request: Synthesize, last_chunk: bool) -> FrameFlags:
    """GREETING marks every chunk of a greeting; the END_* flags only the last chunk."""
    flags = FrameFlags.GREETING if request.greeting else FrameFlags.NONE
    if last_chunk:
        flags |= FrameFlags.END_OF_SENTENCE
        if request.last:
            flags |= FrameFlags.END_OF_TURN
    return flags


class TtsWorker:
    def __init__(self, bus: Bus, settings: TtsSettings, provider: TtsProvider) -> None:
        self.bus = bus
        self.settings = settings
        self.provider = provider
        self.chunk_bytes = chunk_bytes_for(settings.tts_chunk_ms)
        self.tasks = TurnTasks()
        self._work: list[Subscription] = []
        self._control: list[Subscription] = []
        self._ready = False
        self._stopping = False
        ACTIVE_SENTENCES.set_function(self.tasks.active)

    async def start(self) -> None:
        # Cancels and call ends first: they must never miss a sentence that is already running.
        self._control = [
            await self.bus.subscribe(subjects.ALL_TURN_CANCELS, self.on_cancel),
            await self.bus.subscribe(subjects.CALL_ENDED, self.on_call_ended),
        ]
        self._work = [await self.bus.subscribe(subjects.TTS_SYNTHESIZE, self.on_synthesize, queue=subjects.QUEUE_TTS)]
        self._ready = True

    def ready(self) -> bool:
        return self._ready

    def status(self) -> dict[str, Any]:
        return {"provider": self.provider.name, "active_sentences": self.tasks.active(), "turns": self.tasks.turns()}

    async def on_synthesize(self, message: Message, msg: Msg) -> None:
        if not isinstance(message, Synthesize):
            log.warning("ignored %s on %s", type(message).__name__, msg.subject)
            return
        with call_context(message.call_id, message.turn_id):
            if not self.tasks.accepts(message.call_id, message.turn_id):
                log.info("sentence %d of a cancelled turn or ended call; not synthesized", message.seq)
                return
            headers = outgoing_headers(msg, message.call_id, message.turn_id, "tts")
            name = f"tts-{message.call_id}-{message.turn_id}-{message.seq}"
            self.tasks.start(message.call_id, message.turn_id, self._speak(message, headers), name=name)

    async def on_cancel(self, message: Message, msg: Msg) -> None:
        if not isinstance(message, TurnCancel):
            log.warning("ignored %s on %s", type(message).__name__, msg.subject)
            return
        with call_context(message.call_id, message.turn_id):
            if cancelled := self.tasks.cancel_turns(message.call_id, message.turn_id):
                log.info("stopped %d sentence(s) of turns up to %d: %s", cancelled, message.turn_id, message.reason)

    async def on_call_ended(self, message: Message, msg: Msg) -> None:
        if not isinstance(message, CallEnded):
            log.warning("ignored %s on %s", type(message).__name__, msg.subject)
            return
        with call_context(message.call_id):
            if cancelled := self.tasks.end_call(message.call_id):
                log.info("call ended (%s); stopped %d sentence(s)", message.reason, cancelled)

    async def _speak(self, request: Synthesize, headers: dict[str, str]) -> None:
        subject = subjects.audio_out(request.call_id)
        chunker = Chunker(self.chunk_bytes)
        chunk = 0
        audio_bytes = 0
        first_audio_us = 0
        provider_ttfb_ms = 0.0

        async def send(payload: bytes, last: bool) -> None:
            nonlocal chunk, audio_bytes, first_audio_us
            at = now_us()
            frame = AudioFrame(
                payload, request.turn_id, request.seq, chunk, frame_flags(request, last), at, request.attempt
            )
            await self._publish_frame(subject, frame, headers)
            if chunk == 0:
                first_audio_us = at
                if payload:
                    FIRST_AUDIO.observe(max(0, at - request.requested_at_us) / 1e6)
            chunk += 1
            audio_bytes += len(payload)

        async def close_sentence(error: str = "") -> None:
            await send(chunker.finish(), last=True)
            if error:
                failure = TtsError(
                    call_id=request.call_id,
                    turn_id=request.turn_id,
                    seq=request.seq,
                    message=error,
                    attempt=request.attempt,
                )
                await self._publish(subjects.tts_events(request.call_id), failure, headers)
                return
            done = SentenceSynthesized(
                call_id=request.call_id,
                turn_id=request.turn_id,
                seq=request.seq,
                audio_ms=audio_bytes * 1000 / TELEPHONY_RATE,
                first_audio_us=first_audio_us,
                at_us=now_us(),
                provider_ttfb_ms=provider_ttfb_ms,
                attempt=request.attempt,
            )
            await self._publish(subjects.tts_events(request.call_id), done, headers)

        if not request.text.strip():  # the closing "sentence" of a turn: nothing to say
            await close_sentence()
            return
        stall_s = self.settings.tts_stall_timeout_s
        loop = asyncio.get_running_loop()
        started = loop.time()
        stream = self.provider.synthesize(request.text, request.voice)
        try:
            # A provider silent for `stall_s` must not hold the caller's playback forever.
            async with asyncio.timeout(stall_s) as deadline:
                async for piece in stream:
                    if piece and not provider_ttfb_ms:
                        provider_ttfb_ms = (loop.time() - started) * 1000
                    for payload in chunker.push(piece):
                        await send(payload, last=False)
                    deadline.reschedule(loop.time() + stall_s)
        except asyncio.CancelledError:
            if self._stopping and not self.tasks.is_cancelled(request.call_id, request.turn_id):
                await close_sentence("tts worker stopped mid-sentence")
            raise
        except TimeoutError:
            log.error("tts provider %s stalled for %.1fs on call %s", self.provider.name, stall_s, request.call_id)
            await close_sentence(f"{self.provider.name}: no audio for {stall_s}s")
        except ProviderError as exc:  # already logged and counted by the provider chain
            log.error("sentence %d not spoken on call %s: %s", request.seq, request.call_id, exc)
            await close_sentence(f"{self.provider.name}: {exc}")
        except Exception as exc:
            log.exception("tts provider %s failed on call %s", self.provider.name, request.call_id)
            await close_sentence(f"{self.provider.name}: {exc}")
        else:
            await close_sentence()
        finally:
            await close_stream(stream)

    async def _publish_frame(self, subject: str, frame: AudioFrame, headers: dict[str, str]) -> None:
        try:
            await self.bus.publish_frame(subject, frame, headers)
        except Exception:
            log.exception("could not publish audio chunk %d.%d", frame.seq, frame.chunk)

    async def _publish(self, subject: str, message: Message, headers: dict[str, str]) -> None:
        try:
            await self.bus.publish(subject, message, headers)
        except Exception:
            log.exception("could not publish %s", type(message).__name__)

    async def stop(self) -> None:
        """Finish in-flight sentences (briefly), then cut the rest, closing each with an
        END_OF_SENTENCE frame and a TtsError so the caller's playback moves on."""
        self._ready = False
        self._stopping = True
        for sub in self._work:
            await unsubscribe_quietly(sub)
        await self.tasks.drain(STOP_GRACE_S)
        for sub in self._control:
            await unsubscribe_quietly(sub)
        try:
            await self.provider.close()
        except Exception:
            log.exception("tts provider %s failed to close", self.provider.name)


async def start(bus: Bus, settings: TtsSettings) -> TtsWorker:
    provider = make_provider(settings.tts_provider, settings)
    load = getattr(provider, "load", None)
    if load is not None:  # local models load and warm up before the worker reports ready
        await load()
    worker = TtsWorker(bus, settings, provider)
    await worker.start()
    return worker
