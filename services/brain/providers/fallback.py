"""A chain of brain providers (`VOXLINE_BRAIN_PROVIDER=openai,local`): bounded retries of
one provider, then the next, so a rate limit or an outage costs the caller a moment
rather than the answer.

Retries and fallbacks happen only before the reply's first words and within a small
budget after the turn arrived: once a sentence went to TTS, starting over would repeat
it, and past the budget an apology now serves the caller better than an answer later.
A failure that stays becomes a ProviderError, which the worker turns into a ReplyError
(the orchestrator says the agent's apology line).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence

from proto.messages import BrainTurn
from services.brain.providers.base import BrainProvider, ReplyAction
from services.common import ProviderError, close_stream, count_provider_error

log = logging.getLogger("voxline.brain.fallback")


class FallbackBrainProvider:
    def __init__(
        self, providers: Sequence[BrainProvider], attempts: int = 2, backoff_s: float = 0.25, budget_s: float = 1.5
    ) -> None:
        self.providers = list(providers)
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.budget_s = budget_s
        self.name = ",".join(p.name for p in self.providers)

    async def load(self) -> None:
        for provider in self.providers:
            load = getattr(provider, "load", None)
            if load is not None:
                await load()

    async def stream(self, turn: BrainTurn) -> AsyncIterator[str | ReplyAction]:
        started = time.monotonic()
        failure: ProviderError | None = None
        for index, provider in enumerate(self.providers):
            after = self.providers[index + 1].name if index + 1 < len(self.providers) else ""
            for attempt in range(1, self.attempts + 1):
                spoke = False
                stream = provider.stream(turn)
                try:
                    async for piece in stream:
                        spoke = spoke or bool(piece)
                        yield piece
                    return
                except ProviderError as exc:
                    failure = exc
                except Exception as exc:  # a provider bug must not silence the line either
                    log.exception("brain provider %s crashed", provider.name)
                    failure = ProviderError(provider.name, "internal", type(exc).__name__)
                finally:
                    await close_stream(stream)
                count_provider_error(failure)
                if spoke:
                    log.error("brain %s; after the reply began, so the rest of it is lost", failure)
                    raise failure
                delay = self.backoff_s * 2 ** (attempt - 1)
                in_budget = time.monotonic() - started + delay < self.budget_s
                retry = failure.retryable and attempt < self.attempts and in_budget
                outcome = (
                    f"retrying in {delay:.2f}s"
                    if retry
                    else f"falling back to {after}"
                    if after and in_budget
                    else "no provider left: apology"
                )
                log.error("brain %s; %s", failure, outcome)
                if retry:
                    await asyncio.sleep(delay)
                    continue
                if not in_budget:
                    raise failure
                break
        assert failure is not None
        raise failure

    async def close(self) -> None:
        for provider in self.providers:
            try:
                await provider.close()
            except Exception:
                log.exception("brain provider %s failed to close", provider.name)
