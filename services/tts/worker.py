"""The TTS worker: synthesizes sentences from a queue group, one asyncio task per
sentence, and streams each as fixed-length audio chunks to the call's audio.out subject.

While a sentence's audio flows, the worker tells the orchestrator so (`SynthesisProgress`,
with the first chunk and then at most every `tts_progress_interval_s`): its watchdog
follows that, so a worker that dies mid-sentence is replaced within seconds, and a
long sentence that keeps flowing is never taken for a dead one.

The gateway plays a turn's audio in (seq, chunk) order and moves to the next sentence
only on an END_OF_SENTENCE frame, so every sentence this worker accepts ends with one,
even when its text is empty or synthesis fails; otherwise the caller would hear silence
for the rest of the reply. Only a cancelled turn gets no closing frame: the gateway drops
everything of it anyway.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Gauge

from proto import subjects
from proto.audio_frame import AudioFrame, FrameFlags
from proto.messages import SentenceSynthesized, SynthesisProgress, Synthesize, TtsError
from services.common import TurnWorker, WorkKind, launch
from services.tts.providers import TtsProvider, make_provider
from voxline import tracing
from voxline.audio import TELEPHONY_RATE
from voxline.bus import Bus
from voxline.config import TtsSettings
from voxline.telemetry import now_us, stage_histogram

log = logging.getLogger("voxline.tts")

ACTIVE_SENTENCES = Gauge("voxline_tts_active_sentences", "Sentences this TTS worker is synthesizing.")
FIRST_AUDIO = stage_histogram(
    "voxline_tts_first_audio_seconds", "Synthesis request sent to the sentence's first audio chunk published."
)
TTS = WorkKind("tts", subjects.TTS_SYNTHESIZE, subjects.QUEUE_TTS, unit="sentence", output="audio")


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


class TtsWorker(TurnWorker[Synthesize, TtsProvider]):
    def __init__(self, bus: Bus, settings: TtsSettings, provider: TtsProvider) -> None:
        super().__init__(
            bus,
            provider,
            TTS,
            Synthesize,
            settings.tts_stall_timeout_s,
            ACTIVE_SENTENCES,
            capacity=settings.tts_max_sentences,
            worker_id=settings.instance_id,
        )
        self.settings = settings
        self.chunk_bytes = chunk_bytes_for(settings.tts_chunk_ms)

    def task_name(self, request: Synthesize) -> str:
        return f"tts-{request.call_id}-{request.turn_id}-{request.seq}"

    def span_attributes(self, request: Synthesize) -> tracing.Attributes:
        return {"seq": request.seq, "attempt": request.attempt, "greeting": request.greeting}

    async def work(self, request: Synthesize, headers: dict[str, str]) -> None:
        subject = subjects.audio_out(request.call_id)
        chunker = Chunker(self.chunk_bytes)
        chunk = 0
        audio_bytes = 0
        first_audio_us = 0
        provider_ttfb_ms = 0.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        reported = float("-inf")  # when progress was last reported: the first chunk is, at once

        async def send(payload: bytes, last: bool) -> None:
            nonlocal chunk, audio_bytes, first_audio_us, reported
            at = now_us()
            frame = AudioFrame(
                payload, request.turn_id, request.seq, chunk, frame_flags(request, last), at, request.attempt
            )
            await self._publish_frame(subject, frame)
            if chunk == 0:
                first_audio_us = at
                if payload:
                    tracing.add_event("first audio")
                    FIRST_AUDIO.observe(max(0, at - request.requested_at_us) / 1e6)
            chunk += 1
            audio_bytes += len(payload)
            # The last chunk is followed by the sentence's result at once: no report needed.
            if not last and loop.time() - reported >= self.settings.tts_progress_interval_s:
                reported = loop.time()
                await self.publish(subjects.tts_events(request.call_id), progress(chunk, at), headers)

        def progress(chunks: int, at: int) -> SynthesisProgress:
            return SynthesisProgress(
                call_id=request.call_id,
                turn_id=request.turn_id,
                seq=request.seq,
                attempt=request.attempt,
                chunks=chunks,
                at_us=at,
                worker_id=self.worker_id,
            )

        async def take(piece: bytes) -> None:
            nonlocal provider_ttfb_ms
            if piece and not provider_ttfb_ms:
                provider_ttfb_ms = (loop.time() - started) * 1000
            for payload in chunker.push(piece):
                await send(payload, last=False)

        async def fail(reason: str) -> None:
            await send(chunker.finish(), last=True)
            failure = TtsError(
                call_id=request.call_id,
                turn_id=request.turn_id,
                seq=request.seq,
                message=reason,
                attempt=request.attempt,
            )
            await self.publish(subjects.tts_events(request.call_id), failure, headers)

        # An empty text is the closing "sentence" of a turn, or a skip: nothing to say.
        if request.text.strip() and not await self.consume(
            request, self.provider.synthesize(request.text, request.voice), take, fail
        ):
            return
        await send(chunker.finish(), last=True)
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
        await self.publish(subjects.tts_events(request.call_id), done, headers)

    async def _publish_frame(self, subject: str, frame: AudioFrame) -> None:
        """No NATS headers: the frame's binary header says whose it is (call by subject)."""
        try:
            await self.bus.publish_frame(subject, frame)
        except Exception:
            log.exception("could not publish audio chunk %d.%d", frame.seq, frame.chunk)


async def start(bus: Bus, settings: TtsSettings) -> TtsWorker:
    return await launch(TtsWorker(bus, settings, make_provider(settings.tts_provider, settings)))
