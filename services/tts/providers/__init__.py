"""TTS providers by name: `VOXLINE_TTS_PROVIDER`, or the profile's default.

A comma-separated list (`elevenlabs,openai`) is a fallback chain; cloud providers are
always wrapped in one, so their errors get bounded retries, a log line and a count.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from services.providers import FallbackChain, Registry, RetryPolicy
from services.tts.providers.base import TtsProvider
from voxline.config import TtsSettings

__all__ = ["REGISTRY", "FallbackTtsProvider", "TtsProvider", "make_provider"]


FACTORIES = {
    "fake": "fake:FakeTtsProvider",
    "local": "piper:PiperTtsProvider",
    "elevenlabs": "elevenlabs:ElevenLabsTtsProvider",
    "openai": "openai_tts:OpenAiTtsProvider",
}
CLOUD = frozenset({"elevenlabs", "openai"})  # always in a chain, for retries


class FallbackTtsProvider(FallbackChain[TtsProvider]):
    def synthesize(self, text: str, voice: str) -> AsyncIterator[bytes]:
        return self.run(lambda provider: provider.synthesize(text, voice))


def _chain(providers: list[TtsProvider], settings: TtsSettings) -> TtsProvider:
    # No time budget: a sentence is retried as long as tries are left, since the
    # orchestrator's own watchdog bounds how long the caller waits.
    policy = RetryPolicy(settings.tts_provider_attempts, settings.tts_retry_backoff_s)
    return FallbackTtsProvider("tts", providers, policy)


REGISTRY = Registry[TtsSettings, TtsProvider]("tts", __name__, FACTORIES, "elevenlabs", _chain, CLOUD)


def make_provider(name: str, settings: TtsSettings) -> TtsProvider:
    return REGISTRY.make(name, settings)
