"""Brain providers by name: `VOXLINE_BRAIN_PROVIDER`, or the profile's default.

A comma-separated list (`openai,local`) is a fallback chain; the cloud provider is always
wrapped in one, so its errors get bounded retries, a log line and a count. Retries and
fallbacks also stop once the turn has waited `brain_retry_budget_s`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from proto.messages import BrainTurn
from services.brain.providers.base import (
    BrainEvent,
    BrainProvider,
    FirstToken,
    ReplyAction,
    Sentence,
    ToolCalled,
    Usage,
    heard,
)
from services.providers import FallbackChain, Registry, RetryPolicy
from voxline.config import BrainSettings

__all__ = [
    "REGISTRY",
    "BrainEvent",
    "BrainProvider",
    "FallbackBrainProvider",
    "FirstToken",
    "ReplyAction",
    "Sentence",
    "ToolCalled",
    "Usage",
    "make_provider",
]


FACTORIES = {"fake": "fake:FakeBrainProvider", "local": "openai_chat:local_llm", "openai": "openai_chat:openai_llm"}


class FallbackBrainProvider(FallbackChain[BrainProvider]):
    def stream(self, turn: BrainTurn) -> AsyncIterator[BrainEvent]:
        return self.run(lambda provider: provider.stream(turn), committed=heard)


def _chain(providers: list[BrainProvider], settings: BrainSettings) -> BrainProvider:
    policy = RetryPolicy(settings.brain_attempts, settings.brain_retry_backoff_s, settings.brain_retry_budget_s)
    return FallbackBrainProvider("brain", providers, policy)


REGISTRY = Registry[BrainSettings, BrainProvider]("brain", __name__, FACTORIES, "openai", _chain, frozenset({"openai"}))


def make_provider(name: str, settings: BrainSettings) -> BrainProvider:
    return REGISTRY.make(name, settings)
