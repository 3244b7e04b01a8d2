"""OpenAI TTS through the official SDK, streamed as raw 24 kHz PCM and converted on the fly.

`pcm` is the only streamed format without a container or codec delay, so the first
audio reaches the caller as soon as the first bytes arrive; soxr's streaming resampler
keeps its filter state across pieces, so converting piece by piece sounds the same as
converting the whole sentence at once. The SDK's own retries are off: the fallback chain
owns retrying, bounded by what a caller on the line will wait.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import numpy as np
import openai
import soxr

from services.openai_errors import openai_errors
from services.providers import ProviderError, ProviderUnavailable, kind_of_status
from voxline.audio import TELEPHONY_RATE, pcm16_to_mulaw
from voxline.config import TtsSettings

log = logging.getLogger("voxline.tts.openai")

OPENAI_PCM_RATE = 24_000
# The built-in voices by model, as OpenAI's guide lists them
# (https://platform.openai.com/docs/guides/text-to-speech#voice-options): tts-1 and tts-1-hd
# take only the nine older ones; gpt-4o-mini-tts (and its snapshots) all thirteen.
TTS1_VOICES = frozenset({"alloy", "ash", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer"})
VOICES = TTS1_VOICES | {"ballad", "verse", "marin", "cedar"}


def voices_of(model: str) -> frozenset[str]:
    """The voices `model` speaks; a model we do not know gets the full list (the API decides)."""
    return TTS1_VOICES if model.startswith("tts-1") else VOICES


class PcmToMulaw:
    """24 kHz 16-bit little-endian PCM pieces in, 8 kHz mu-law out, with state kept across
    pieces: an odd trailing byte waits for its partner and the resampler's filter history
    carries over, so piece boundaries leave no clicks."""

    def __init__(self, from_rate: int = OPENAI_PCM_RATE) -> None:
        self._stream = soxr.ResampleStream(from_rate, TELEPHONY_RATE, 1, dtype="int16", quality="HQ")
        self._odd = b""

    def push(self, piece: bytes, last: bool = False) -> bytes:
        data = self._odd + piece
        usable = len(data) - len(data) % 2
        self._odd = data[usable:]
        samples = np.frombuffer(data[:usable], dtype="<i2")
        out: np.ndarray = self._stream.resample_chunk(samples, last=last)
        return pcm16_to_mulaw(out) if out.size else b""

    def finish(self) -> bytes:
        """What the resampler still holds at the end of the sentence."""
        return self.push(b"", last=True)


class OpenAiTtsProvider:
    name = "openai"

    def __init__(self, settings: TtsSettings) -> None:
        self.settings = settings
        model, voice = settings.openai_tts.model, settings.openai_tts.voice
        self.voices = voices_of(model)
        if voice not in self.voices:
            # At start, not on the first sentence: every sentence would be refused (HTTP 400).
            known = ", ".join(sorted(self.voices))
            raise ProviderUnavailable(
                f"OpenAI TTS model {model} has no voice {voice!r} (VOXLINE_OPENAI_TTS_VOICE); choose one of {known}"
            )
        timeout = settings.openai_tts.timeout_s
        self.client = openai.AsyncOpenAI(
            api_key=settings.openai_tts.api_key.get_secret_value() or "missing-key",
            base_url=settings.openai_tts.base_url or None,
            max_retries=0,
            timeout=httpx2.Timeout(timeout, connect=timeout),
            # Keep idle connections longer than the 5 s default, so a quiet minute in a call
            # does not cost a new TLS handshake on the next sentence.
            http_client=openai.DefaultAsyncHttpxClient(
                limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=60.0)
            ),
        )

    def voice_for(self, voice: str) -> str:
        """An agent's voice when this model speaks it (agents may name another provider's
        voice, for a fallback chain), else the configured one."""
        return voice if voice in self.voices else self.settings.openai_tts.voice

    async def load(self) -> None:
        """Open a connection (and check the key) before the first caller needs it."""
        try:
            await self.client.models.list()
        except openai.APIStatusError as exc:
            error = ProviderError(self.name, kind_of_status(exc.status_code), "warm-up refused", exc.status_code)
            log.warning("%s", error)
        except openai.APIError as exc:
            log.warning("warm-up request failed: %s", type(exc).__name__)

    async def synthesize(self, text: str, voice: str) -> AsyncIterator[bytes]:
        converter = PcmToMulaw()
        extra: dict[str, Any] = {}
        if self.settings.openai_tts.instructions and self.settings.openai_tts.model.startswith("gpt-"):
            extra["instructions"] = self.settings.openai_tts.instructions
        with openai_errors(self.name, f"no audio for {self.settings.openai_tts.timeout_s}s"):
            async with self.client.audio.speech.with_streaming_response.create(
                model=self.settings.openai_tts.model,
                voice=self.voice_for(voice),
                input=text,
                response_format="pcm",
                **extra,
            ) as response:
                async for piece in response.iter_bytes():
                    if audio := converter.push(piece):
                        yield audio
        if tail := converter.finish():
            yield tail

    async def close(self) -> None:
        await self.client.close()
