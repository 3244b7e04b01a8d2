"""What the stt, brain and tts workers share about providers: the protocol every provider
follows, the registry that picks one from settings, and the fallback chain.

One shape for all three, so adding a provider means one factory in one table, and the
retry policy that protects a waiting caller lives in one place.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from prometheus_client import Counter

from voxline.config import CommonSettings
from voxline.metrics import exemplar

log = logging.getLogger("voxline.providers")


class Provider(Protocol):
    """What every stt, brain and tts provider offers besides its own work method."""

    name: str

    async def load(self) -> None:
        """Load models, open warm connections: done before the worker reports ready, so
        the first caller does not pay for it. Nothing for providers with nothing to load."""
        ...

    async def close(self) -> None:
        """Release shared clients and models when the worker stops."""
        ...


async def close_provider(provider: Provider) -> None:
    try:
        await provider.close()
    except Exception:
        log.exception("provider %s failed to close", provider.name)


class ProviderUnavailable(RuntimeError):
    """The configured provider cannot be used by this build or configuration."""


PROVIDER_ERRORS = Counter(
    "voxline_provider_errors_total", "Errors of cloud/local providers, by provider and kind.", ["provider", "kind"]
)

# What a provider error is, and whether trying again soon may help.
RETRYABLE_KINDS = frozenset({"rate_limited", "server", "dropped"})
ERROR_KINDS = ("auth", "rate_limited", "server", "timeout", "dropped", "bad_request", "internal")


class ProviderError(RuntimeError):
    """A provider failed in a way the caller of the provider can act on.

    `kind` is one of auth, rate_limited, server, timeout, dropped, bad_request; the
    message carries the provider and the HTTP status or close code, never a key, because
    it ends up in logs and in TtsError/SttError messages on the bus.
    """

    def __init__(self, provider: str, kind: str, detail: str, status: int | None = None) -> None:
        self.provider, self.kind, self.status = provider, kind, status
        where = f" (status {status})" if status is not None else ""
        super().__init__(f"{provider} {kind}{where}: {detail}")

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS


def kind_of_status(status: int) -> str:
    """The error kind of an HTTP status from a provider."""
    if status in (401, 403):
        return "auth"
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server"
    return "bad_request"


def count_provider_error(error: ProviderError) -> None:
    PROVIDER_ERRORS.labels(provider=error.provider, kind=error.kind).inc(exemplar=exemplar())


async def close_stream(stream: object) -> None:
    """Close a provider's async generator now rather than at garbage collection, so its
    HTTP stream or model run ends with the turn (also when we stopped reading early)."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.debug("closing a provider stream failed", exc_info=True)


P = TypeVar("P", bound=Provider)
S = TypeVar("S", bound=CommonSettings)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of one provider (on retryable errors only), then the next one."""

    attempts: int = 2  # tries per provider
    backoff_s: float = 0.25  # wait before a retry, doubled per try
    # No retry or fallback starts later than this after the request arrived: past it, an
    # apology now serves the caller better than an answer later.
    budget_s: float = math.inf


class FallbackChain(Generic[P]):
    """Providers tried in order (`VOXLINE_TTS_PROVIDER=elevenlabs,openai`).

    Retries and fallbacks happen only before the stream's first output: once the caller
    may have heard part of it, starting over would repeat words, so a failure after that
    raises and the worker ends the reply or sentence with an error. The next request starts
    fresh from the head of the chain.
    """

    def __init__(self, kind: str, providers: Sequence[P], policy: RetryPolicy) -> None:
        self.kind = kind
        self.providers = list(providers)
        self.policy = policy
        self.name = ",".join(p.name for p in self.providers)

    async def load(self) -> None:
        for provider in self.providers:
            await provider.load()

    async def run(
        self, open_stream: Callable[[P], AsyncIterator[T]], committed: Callable[[T], bool] = bool
    ) -> AsyncIterator[T]:
        """What `open_stream(provider)` yields, from the first provider that delivers;
        once an item is `committed` (may reach the caller), no other attempt starts."""
        started = time.monotonic()
        attempts = max(1, self.policy.attempts)
        failure: ProviderError | None = None
        for index, provider in enumerate(self.providers):
            after = self.providers[index + 1].name if index + 1 < len(self.providers) else ""
            for attempt in range(1, attempts + 1):
                began = False
                stream = open_stream(provider)
                try:
                    async for piece in stream:
                        began = began or committed(piece)
                        yield piece
                    return
                except ProviderError as exc:
                    failure = exc
                except Exception as exc:  # a provider bug must not silence the line either
                    log.exception("%s provider %s crashed", self.kind, provider.name)
                    failure = ProviderError(provider.name, "internal", type(exc).__name__)
                finally:
                    await close_stream(stream)
                count_provider_error(failure)
                if began:
                    log.error("%s %s; after output began, so the rest of it is lost", self.kind, failure)
                    raise failure
                delay = self.policy.backoff_s * 2 ** (attempt - 1)
                in_budget = time.monotonic() - started + delay < self.policy.budget_s
                retry = failure.retryable and attempt < attempts and in_budget
                if retry:
                    outcome = f"retrying in {delay:.2f}s"
                elif after and in_budget:
                    outcome = f"falling back to {after}"
                else:
                    outcome = "no provider left"
                log.error("%s %s; %s", self.kind, failure, outcome)
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
                log.exception("%s provider %s failed to close", self.kind, provider.name)


@dataclass(frozen=True)
class Lazy:
    """A provider class (or factory) named "module:attribute", imported on first use, so a
    worker never imports the SDKs and models of providers it does not run."""

    path: str

    def target(self) -> Callable[[Any], Any]:
        module, _, attribute = self.path.partition(":")
        factory: Callable[[Any], Any] = getattr(importlib.import_module(module), attribute)
        return factory

    def __call__(self, settings: Any) -> Any:
        return self.target()(settings)


@dataclass(frozen=True)
class Registry(Generic[S, P]):
    """The providers of one kind by name, and each profile's default: `fake` and `local`
    are named like their profile, `cloud` picks the one named here.

    `factories` maps a name to "module:attribute" within `package`, imported only when
    chosen. A comma-separated name (`elevenlabs,openai`) is a fallback chain, where `chain`
    is given; the `always_chained` (cloud) providers are wrapped in one even alone, so
    their errors get bounded retries, a log line and a count.
    """

    kind: str
    package: str
    factories: Mapping[str, str]
    cloud: str
    chain: Callable[[list[P], S], P] | None = None
    always_chained: frozenset[str] = field(default_factory=frozenset)

    def resolve(self, name: str, profile: str) -> str:
        """`name` when set, else the profile's choice; an unknown name fails at startup
        with the list of valid ones rather than on the first call."""
        chosen = name.strip().lower() or (self.cloud if profile == "cloud" else profile)
        if chosen not in self.factories:
            known = ", ".join(self.factories)
            why = f"unknown {self.kind} provider {chosen!r} (profile {profile!r})"
            raise ProviderUnavailable(f"{why}; choose one of {known}")
        return chosen

    def factory(self, name: str) -> Lazy:
        return Lazy(f"{self.package}.{self.factories[name]}")

    def make(self, name: str, settings: S) -> P:
        names = [part for part in name.split(",") if part.strip()] or [""]
        chosen = [self.resolve(part, settings.profile) for part in names]
        if len(chosen) > 1 and self.chain is None:
            raise ProviderUnavailable(f"{self.kind} takes one provider, not a chain: {name!r}")
        providers: list[P] = [self.factory(each)(settings) for each in chosen]
        for provider in providers:  # every series from the start, at zero: an error rate is 0, not "no data"
            for kind in ERROR_KINDS:
                PROVIDER_ERRORS.labels(provider=provider.name, kind=kind)
        if self.chain is None or (len(chosen) == 1 and chosen[0] not in self.always_chained):
            return providers[0]
        return self.chain(providers, settings)
