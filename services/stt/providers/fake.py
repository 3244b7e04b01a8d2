"""Fake STT: an energy detector plus a script of transcripts.

It hears *that* the caller speaks (frame level above a threshold) and pretends to
understand the next scripted line, so the whole pipeline, turn-taking and barge-in
included, runs without a model. Silence is counted in frame durations rather than wall
time: Twilio sends frames continuously, and tests can feed them as fast as they like.
"""

from __future__ import annotations

import asyncio

from proto.audio_frame import AudioFrame
from proto.messages import SpeechEnded, SpeechStarted, SttAssign, Transcript
from services.stt.providers.base import Emit
from voxline.audio import TELEPHONY_RATE, mulaw_to_pcm16, rms_dbfs
from voxline.config import SttSettings
from voxline.telemetry import now_us

START_FRAMES = 2  # consecutive speech frames that make an utterance; fewer is a blip
PARTIAL_AFTER_MS = 200.0  # speech heard before the partial transcript is emitted
DEFAULT_TRANSCRIPT = "hello"


class FakeSttProvider:
    name = "fake"

    def __init__(self, settings: SttSettings) -> None:
        self.settings = settings

    async def open(self, assign: SttAssign, emit: Emit) -> FakeSttSession:
        script = assign.custom_parameters.get("fake_transcripts") or self.settings.fake_transcripts
        # An empty line is an utterance with no words in it (a cough, noise).
        lines = [line.strip() for line in script.split("|")] if script.strip() else [DEFAULT_TRANSCRIPT]
        session = FakeSttSession(assign.call_id, lines, self.settings, emit)
        session.utterances = assign.finals_heard  # a moved call goes on with its next line
        if assign.pause_ms > 0:  # the orchestrator's early pause report wins over the fake's own default
            session.end_silence_ms = float(assign.pause_ms)
        return session

    async def load(self) -> None:
        pass  # nothing to load

    async def close(self) -> None:
        pass


class FakeSttSession:
    def __init__(self, call_id: str, script: list[str], settings: SttSettings, emit: Emit) -> None:
        self.call_id = call_id
        self.script = script
        self.emit = emit
        self.threshold_dbfs = settings.fake_speech_dbfs
        self.end_silence_ms = float(settings.fake_end_silence_ms)
        self.latency_ms = settings.fake_stt_latency_ms
        self.utterances = 0  # how many finished; picks the script line
        self.closed = False
        self._finals: set[asyncio.Task[None]] = set()
        self._reset()

    def _reset(self) -> None:
        self.in_speech = False
        self.run_frames = 0  # consecutive speech frames before the utterance started
        self.run_start_us = 0
        self.run_ms = 0.0
        self.speech_ms = 0.0
        self.silence_ms = 0.0
        self.last_speech_end_us = 0
        self.partial_sent = False

    @property
    def current_text(self) -> str:
        return self.script[self.utterances % len(self.script)]

    async def feed(self, frame: AudioFrame) -> None:
        if self.closed or not frame.payload:
            return
        arrived_us = now_us()
        duration_ms = len(frame.payload) * 1000.0 / TELEPHONY_RATE
        speech = rms_dbfs(mulaw_to_pcm16(frame.payload)) > self.threshold_dbfs
        if not self.in_speech:
            await self._before_speech(speech, arrived_us, duration_ms)
        elif speech:
            self.silence_ms = 0.0
            self.speech_ms += duration_ms
            self.last_speech_end_us = arrived_us + int(duration_ms * 1000)
            await self._maybe_partial()
        else:
            self.silence_ms += duration_ms
            if self.silence_ms >= self.end_silence_ms:
                await self._end_utterance()

    async def _before_speech(self, speech: bool, arrived_us: int, duration_ms: float) -> None:
        if not speech:
            self.run_frames, self.run_ms = 0, 0.0  # a blip too short to count
            return
        if self.run_frames == 0:
            self.run_start_us = arrived_us
        self.run_frames += 1
        self.run_ms += duration_ms
        self.last_speech_end_us = arrived_us + int(duration_ms * 1000)
        if self.run_frames >= START_FRAMES:
            self.in_speech = True
            self.speech_ms = self.run_ms
            await self.emit(SpeechStarted(call_id=self.call_id, at_us=self.run_start_us))
            await self._maybe_partial()

    async def _maybe_partial(self) -> None:
        """One early partial with the first word, like a real recogniser's first guess;
        enough for the orchestrator to treat recognised words as a barge-in."""
        if self.partial_sent or self.speech_ms < PARTIAL_AFTER_MS:
            return
        self.partial_sent = True
        words = self.current_text.split()
        if not words:
            return
        first_word = words[0]
        await self.emit(Transcript(call_id=self.call_id, text=first_word, is_final=False, at_us=now_us()))

    async def _end_utterance(self) -> None:
        text = self.current_text
        speech_end_us = self.last_speech_end_us
        self.utterances += 1
        self._reset()
        await self.emit(SpeechEnded(call_id=self.call_id, at_us=now_us(), speech_end_us=speech_end_us))
        task = asyncio.create_task(self._final(text), name=f"stt-final-{self.call_id}")
        self._finals.add(task)
        task.add_done_callback(self._finals.discard)

    async def _final(self, text: str) -> None:
        """The recogniser's latency runs beside the audio, never blocking `feed`."""
        await asyncio.sleep(self.latency_ms / 1000)
        if not self.closed:
            await self.emit(
                Transcript(
                    call_id=self.call_id, text=text, is_final=True, at_us=now_us(), provider_ms=float(self.latency_ms)
                )
            )

    async def close(self) -> None:
        self.closed = True
        for task in list(self._finals):
            task.cancel()
        if self._finals:
            await asyncio.gather(*self._finals, return_exceptions=True)
