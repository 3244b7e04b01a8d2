"""STT provider registry: the name from settings, or the profile's default."""

from __future__ import annotations

from services.common import ProviderUnavailable, resolve_provider
from services.stt.providers.base import Emit, SttProvider, SttSession
from voxline.config import SttSettings

__all__ = ["Emit", "SttProvider", "SttSession", "make_provider"]

KNOWN = ("fake", "local", "deepgram")
BY_PROFILE = {"fake": "fake", "local": "local", "cloud": "deepgram"}


def make_provider(name: str, settings: SttSettings) -> SttProvider:
    chosen = resolve_provider("stt", name, settings.profile, BY_PROFILE, KNOWN)
    if chosen == "fake":
        from services.stt.providers.fake import FakeSttProvider

        return FakeSttProvider(settings)
    if chosen == "local":
        from services.stt.providers.local import LocalSttProvider

        return LocalSttProvider(settings)
    if chosen == "deepgram":
        from services.stt.providers.deepgram import DeepgramSttProvider

        return DeepgramSttProvider(settings)
    raise ProviderUnavailable(f"stt provider {chosen!r} not available yet")
