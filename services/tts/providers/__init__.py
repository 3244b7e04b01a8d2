"""TTS provider registry: the name from settings, or the profile's default.

A comma-separated list (`elevenlabs,openai`) is a fallback chain; cloud providers are
always wrapped in one, so their errors get bounded retries, a log line and a count.
"""

from __future__ import annotations

from services.common import ProviderUnavailable, resolve_provider
from services.tts.providers.base import TtsProvider
from voxline.config import TtsSettings

__all__ = ["TtsProvider", "make_provider"]

KNOWN = ("fake", "local", "elevenlabs", "openai")
BY_PROFILE = {"fake": "fake", "local": "local", "cloud": "elevenlabs"}
CLOUD = ("elevenlabs", "openai")


def _make_one(chosen: str, settings: TtsSettings) -> TtsProvider:
    if chosen == "fake":
        from services.tts.providers.fake import FakeTtsProvider

        return FakeTtsProvider(settings)
    if chosen == "local":
        from services.tts.providers.piper import PiperTtsProvider

        return PiperTtsProvider(settings)
    if chosen == "elevenlabs":
        from services.tts.providers.elevenlabs import ElevenLabsTtsProvider

        return ElevenLabsTtsProvider(settings)
    if chosen == "openai":
        from services.tts.providers.openai_tts import OpenAiTtsProvider

        return OpenAiTtsProvider(settings)
    raise ProviderUnavailable(f"tts provider {chosen!r} not available yet")


def make_provider(name: str, settings: TtsSettings) -> TtsProvider:
    names = [part for part in name.split(",") if part.strip()] or [""]
    chosen = [resolve_provider("tts", part, settings.profile, BY_PROFILE, KNOWN) for part in names]
    providers = [_make_one(c, settings) for c in chosen]
    if len(providers) == 1 and chosen[0] not in CLOUD:
        return providers[0]
    from services.tts.providers.fallback import FallbackTtsProvider

    return FallbackTtsProvider(providers, settings.tts_provider_attempts, settings.tts_retry_backoff_s)
