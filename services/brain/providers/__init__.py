"""Brain provider registry: the name from settings, or the profile's default.

A comma-separated list (`openai,local`) is a fallback chain; the cloud provider is always
wrapped in one, so its errors get bounded retries, a log line and a count.
"""

from __future__ import annotations

from services.brain.providers.base import BrainProvider, ReplyAction
from services.common import ProviderUnavailable, resolve_provider
from voxline.config import BrainSettings

__all__ = ["BrainProvider", "ReplyAction", "make_provider"]

KNOWN = ("fake", "local", "openai")
BY_PROFILE = {"fake": "fake", "local": "local", "cloud": "openai"}


def _make_one(chosen: str, settings: BrainSettings) -> BrainProvider:
    if chosen == "fake":
        from services.brain.providers.fake import FakeBrainProvider

        return FakeBrainProvider(settings)
    if chosen in ("local", "openai"):
        from services.brain.providers.openai_chat import OpenAIChatProvider

        return OpenAIChatProvider(settings, name=chosen)
    raise ProviderUnavailable(f"brain provider {chosen!r} not available yet")


def make_provider(name: str, settings: BrainSettings) -> BrainProvider:
    names = [part for part in name.split(",") if part.strip()] or [""]
    chosen = [resolve_provider("brain", part, settings.profile, BY_PROFILE, KNOWN) for part in names]
    providers = [_make_one(c, settings) for c in chosen]
    if len(providers) == 1 and chosen[0] != "openai":
        return providers[0]
    from services.brain.providers.fallback import FallbackBrainProvider

    return FallbackBrainProvider(
        providers, settings.brain_attempts, settings.brain_retry_backoff_s, settings.brain_retry_budget_s
    )
