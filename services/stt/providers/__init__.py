"""STT providers by name: `VOXLINE_STT_PROVIDER`, or the profile's default. One provider
only: a call's audio is streamed to one session, so there is nothing to fall back to
mid-call (the orchestrator reassigns the call when a session fails)."""

from __future__ import annotations

from services.providers import Registry
from services.stt.providers.base import Emit, SttProvider, SttSession
from voxline.config import SttSettings

__all__ = ["REGISTRY", "Emit", "SttProvider", "SttSession", "make_provider"]

FACTORIES = {
    "fake": "fake:FakeSttProvider",
    "local": "local:LocalSttProvider",
    "deepgram": "deepgram:DeepgramSttProvider",
}
REGISTRY = Registry[SttSettings, SttProvider]("stt", __name__, FACTORIES, cloud="deepgram")


def make_provider(name: str, settings: SttSettings) -> SttProvider:
    return REGISTRY.make(name, settings)
