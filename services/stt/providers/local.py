"""Local STT: Silero VAD decides when the caller speaks, Whisper tiny.en transcribes.

Whisper pads every input to a 30 s window, so a call costs about the same (~330 ms on two
cores) whatever the audio length. Streaming re-transcription would multiply that cost, so
each utterance is transcribed exactly once, when the VAD says it ended. There are no
partial transcripts: barge-in is driven by SpeechStarted, and a partial would spend a full
Whisper pass on the shared cores just when the LLM needs them.

Silero runs inline on the event loop: one 32 ms window costs ~0.1 ms, far less than a hop
to a thread. Whisper runs on a single-thread executor: one model per worker serves every
call (faster-whisper's num_workers=1 decodes one input at a time anyway), and the loop
keeps moving audio meanwhile.

The agent's keywords go to Whisper as a short "Glossary: ..." prompt: tiny.en hears
"Cigna" as "signal" without one, and a business's own names are what callers ask about.

An utterance ends after `SttAssign.pause_ms` of silence (the orchestrator asks for an early
report, 200 ms by default, and decides itself whether the turn is over). SpeechEnded then
carries Smart Turn's acoustic probability that the turn is complete, computed on its own
one-thread executor so it never queues behind a Whisper pass; the feed waits for it
(~25 ms), which keeps SpeechEnded ahead of the next SpeechStarted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from proto.audio_frame import AudioFrame
from proto.messages import SpeechEnded, SpeechStarted, SttAssign, Transcript
from services.stt.providers.base import Emit
from services.stt.smart_turn import NO_MODEL, SmartTurn, TurnAudio, load_smart_turn
from voxline.agents.turn_options import TurnOptions
from voxline.audio import TELEPHONY_RATE, mulaw_to_pcm16, pcm16_to_float, resample, tone_pcm16
from voxline.config import SttSettings
from voxline.models import silero_vad_path, whisper_model_dir
from voxline.telemetry import now_us, words

log = logging.getLogger("voxline.stt.local")

WHISPER_RATE = 16000
VAD_WINDOW = 256  # samples at 8 kHz (32 ms): the only size Silero accepts at this rate
VAD_CONTEXT = 32  # samples of the previous window Silero expects in front of each one
WINDOW_MS = VAD_WINDOW * 1000 / TELEPHONY_RATE
PREROLL_MS = 200  # audio kept before the detected onset, so the first syllable is not clipped
END_HYSTERESIS = 0.15  # speech continues until the probability falls this far below the threshold
# Speech after a gap longer than the longest wait for an unfinished turn starts a new turn.
TURN_GAP_MS = float(TurnOptions().incomplete_silence_ms)


class LocalSttProvider:
    name = "local"

    def __init__(self, settings: SttSettings) -> None:
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")
        self._whisper: Any = None
        self._vad: Any = None
        self._load_lock = asyncio.Lock()
        # Smart Turn: separate from Whisper's executor, or a decision would wait out a transcription.
        self._smart_turn: SmartTurn | None = None
        self._turn_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smart-turn")

    async def load(self) -> None:
        """Load and warm both models once; idempotent, so open() can call it too."""
        async with self._load_lock:
            if self._whisper is None:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._load_sync)

    def _load_sync(self) -> None:
        import onnxruntime as ort
        from faster_whisper import WhisperModel

        started = time.monotonic()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see piper.py
        self._vad = ort.InferenceSession(str(silero_vad_path()), sess_options=opts, providers=["CPUExecutionProvider"])
        log.info("model silero-vad loaded in %.0f ms", (time.monotonic() - started) * 1000)
        started = time.monotonic()
        self._whisper = WhisperModel(
            str(whisper_model_dir()),
            device="cpu",
            compute_type="int8",
            cpu_threads=self.settings.whisper_threads,
            num_workers=1,
        )
        log.info("model whisper tiny.en loaded in %.0f ms", (time.monotonic() - started) * 1000)
        self._smart_turn = load_smart_turn()  # None (warned once) when the model is absent
        started = time.monotonic()
        # The first decode allocates buffers and is the slowest; pay for it now.
        self.transcribe_pcm8k(pcm16_to_float(tone_pcm16(1000)))
        VadStream(self._vad).probability(np.zeros(VAD_WINDOW, np.float32))
        log.info("stt warm-up done in %.0f ms", (time.monotonic() - started) * 1000)

    def transcribe_pcm8k(self, audio: np.ndarray, prompt: str | None = None) -> str:
        """Blocking: float32 8 kHz mono in, text out (empty when Whisper thinks it is no speech)."""
        audio16 = resample(audio.astype(np.float32, copy=False), TELEPHONY_RATE, WHISPER_RATE)
        segments, _ = self._whisper.transcribe(
            audio16,
            language="en",
            beam_size=1,
            without_timestamps=True,
            vad_filter=False,
            condition_on_previous_text=False,
            initial_prompt=prompt,
        )
        # Whisper's own rule for "this was not speech" (it invents "Thank you." on noise).
        kept = [s.text.strip() for s in segments if not (s.no_speech_prob > 0.6 and s.avg_logprob < -1.0)]
        return " ".join(t for t in kept if t)

    async def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> tuple[str, float]:
        """(text, milliseconds the transcription itself took), off the event loop."""

        def run() -> tuple[str, float]:
            started = time.monotonic()
            text = self.transcribe_pcm8k(audio, prompt)
            return text, (time.monotonic() - started) * 1000

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def end_of_turn_probability(self, audio_16k: np.ndarray) -> float:
        """Smart Turn's probability that the turn is complete; NO_MODEL without the model."""
        model = self._smart_turn
        if model is None or audio_16k.size == 0:
            return NO_MODEL
        return await asyncio.get_running_loop().run_in_executor(self._turn_executor, model.predict, audio_16k)

    async def open(self, assign: SttAssign, emit: Emit) -> LocalSttSession:
        await self.load()
        session = LocalSttSession(assign.call_id, self, VadStream(self._vad), self.settings, emit)
        session.prompt = glossary(assign.keywords)
        if assign.pause_ms > 0:
            session.silence_ms_needed = float(assign.pause_ms)
        return session

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._turn_executor.shutdown(wait=False, cancel_futures=True)


def glossary(keywords: list[str]) -> str | None:
    words = [k.strip() for k in keywords if k.strip()]
    return f"Glossary: {', '.join(words)}." if words else None


class VadStream:
    """Silero's recurrent state for one audio stream; the ONNX session is shared."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.state = np.zeros((2, 1, 128), np.float32)
        self.context = np.zeros((1, VAD_CONTEXT), np.float32)
        self.sr = np.array(TELEPHONY_RATE, dtype=np.int64)

    def probability(self, window: np.ndarray) -> float:
        x = np.concatenate([self.context, window.reshape(1, -1)], axis=1)
        prob, self.state = self.session.run(None, {"input": x, "state": self.state, "sr": self.sr})
        self.context = x[:, -VAD_CONTEXT:]
        return float(prob[0, 0])


class LocalSttSession:
    """One call: VAD state, the utterance being heard, and its pending transcriptions."""

    def __init__(self, call_id: str, provider: LocalSttProvider, vad: VadStream, settings: SttSettings, emit: Emit):
        self.call_id = call_id
        self.provider = provider
        self.vad = vad
        self.emit = emit
        self.threshold = settings.stt_vad_threshold
        self.start_ms = float(settings.stt_vad_start_ms)
        self.silence_ms_needed = float(settings.stt_vad_silence_ms)
        self.max_utterance_ms = settings.stt_max_utterance_s * 1000
        self.prompt: str | None = None
        self.closed = False
        self._pending = np.zeros(0, np.float32)  # samples not yet a full VAD window
        self._preroll: deque[np.ndarray] = deque(maxlen=max(1, int((PREROLL_MS + self.start_ms) / WINDOW_MS)))
        self._finals: set[asyncio.Task[None]] = set()
        self._last_final: asyncio.Task[None] | None = None
        self.turn_audio = TurnAudio(VAD_WINDOW, TELEPHONY_RATE, TURN_GAP_MS)  # what Smart Turn hears
        self._reset()

    def _reset(self) -> None:
        self.in_speech = False
        self.run_ms = 0.0  # consecutive speech before the onset is confirmed
        self.run_start_us = 0
        self.silence_ms = 0.0
        self.speech_end_us = 0
        self.utterance: list[np.ndarray] = []
        self.utterance_ms = 0.0

    async def feed(self, frame: AudioFrame) -> None:
        if self.closed or not frame.payload:
            return
        arrived_us = now_us()
        samples = np.concatenate([self._pending, pcm16_to_float(mulaw_to_pcm16(frame.payload))])
        n_windows = len(samples) // VAD_WINDOW
        self._pending = samples[n_windows * VAD_WINDOW :]
        for window in samples[: n_windows * VAD_WINDOW].reshape(n_windows, VAD_WINDOW):
            await self._on_window(window, self.vad.probability(window), arrived_us)

    async def _on_window(self, window: np.ndarray, prob: float, at_us: int) -> None:
        self.turn_audio.push(window)
        if not self.in_speech:
            self._preroll.append(window)
            if prob < self.threshold:
                self.run_ms = 0.0
                return
            if self.run_ms == 0.0:
                self.run_start_us = at_us - int(WINDOW_MS * 1000)
            self.run_ms += WINDOW_MS
            self.speech_end_us = at_us
            if self.run_ms >= self.start_ms:
                self.in_speech = True
                self.utterance = list(self._preroll)
                self.utterance_ms = len(self.utterance) * WINDOW_MS
                self._preroll.clear()
                self.turn_audio.speech_started(len(self.utterance))
                await self.emit(SpeechStarted(call_id=self.call_id, at_us=self.run_start_us))
            return
        self.utterance.append(window)
        self.utterance_ms += WINDOW_MS
        if prob >= self.threshold - END_HYSTERESIS:
            self.silence_ms = 0.0
            self.speech_end_us = at_us
        else:
            self.silence_ms += WINDOW_MS
        if self.silence_ms >= self.silence_ms_needed or self.utterance_ms >= self.max_utterance_ms:
            await self._end_utterance()

    async def _end_utterance(self) -> None:
        audio = np.concatenate(self.utterance)
        speech_end_us = self.speech_end_us
        self._reset()
        confirmed_us = now_us()
        self.turn_audio.speech_ended()
        probability = await self.provider.end_of_turn_probability(self.turn_audio.audio_16k())
        if self.closed:
            return
        await self.emit(
            SpeechEnded(
                call_id=self.call_id,
                at_us=confirmed_us,
                speech_end_us=speech_end_us,
                end_of_turn_probability=round(probability, 4),
            )
        )
        task = asyncio.create_task(self._final(audio, self._last_final), name=f"stt-final-{self.call_id}")
        self._last_final = task
        self._finals.add(task)
        task.add_done_callback(self._finals.discard)

    async def _final(self, audio: np.ndarray, previous: asyncio.Task[None] | None) -> None:
        """Transcribe beside the audio path; finals leave in utterance order. An empty
        final is still sent, so the orchestrator need not wait out its timeout on noise."""
        text, took_ms = await self.provider.transcribe(audio, self.prompt)
        if previous is not None:
            await asyncio.wait([previous])
        if self.closed:
            return
        log.info("final transcript in %.0f ms: %s", took_ms, words(text))
        await self.emit(
            Transcript(call_id=self.call_id, text=text, is_final=True, at_us=now_us(), provider_ms=round(took_ms, 1))
        )

    async def close(self) -> None:
        self.closed = True
        for task in list(self._finals):
            task.cancel()
        if self._finals:
            await asyncio.gather(*self._finals, return_exceptions=True)
