"""TTS provider registry: the name from settings, or the profile's default."""

from __future__ import annotations

from services.common import ProviderUnavailable, resolve_provider
from services.tts.providers.base import TtsProvider
from voxline.config import TtsSettings

__all__ = ["TtsProvider", "make_provider"]

KNOWN = ("fake", "local", "elevenlabs", "openai")
BY_PROFILE = {"fake": "fake", "local": "local", "cloud": "elevenlabs"}


def make_provider(name: str, settings: TtsSettings) -> TtsProvider:
    chosen = resolve_provider("tts", name, settings.profile, BY_PROFILE, KNOWN)
    if chosen == "fake":
        from services.tts.providers.fake import FakeTtsProvider

        return FakeTtsProvider(settings)
    if chosen == "local":
        from services.tts.providers.piper import PiperTtsProvider

        return PiperTtsProvider(settings)
    raise ProviderUnavailable(f"tts provider {chosen!r} not available yet")
