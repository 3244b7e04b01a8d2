"""Brain provider registry: the name from settings, or the profile's default."""

from __future__ import annotations

from services.brain.providers.base import BrainProvider
from services.common import ProviderUnavailable, resolve_provider
from voxline.config import BrainSettings

__all__ = ["BrainProvider", "make_provider"]

KNOWN = ("fake", "local", "openai")
BY_PROFILE = {"fake": "fake", "local": "local", "cloud": "openai"}


def make_provider(name: str, settings: BrainSettings) -> BrainProvider:
    chosen = resolve_provider("brain", name, settings.profile, BY_PROFILE, KNOWN)
    if chosen == "fake":
        from services.brain.providers.fake import FakeBrainProvider

        return FakeBrainProvider(settings)
    if chosen in ("local", "openai"):
        from services.brain.providers.openai_chat import OpenAIChatProvider

        return OpenAIChatProvider(settings, name=chosen)
    raise ProviderUnavailable(f"brain provider {chosen!r} not available yet")
