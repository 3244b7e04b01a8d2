"""A chain of TTS providers (`VOXLINE_TTS_PROVIDER=elevenlabs,openai`): bounded retries of
one provider, then the next one, so a provider outage costs the caller a moment rather
than the reply.

Retries and fallbacks happen only before a sentence's first audio: once the caller may
have heard part of it, starting over would repeat words, so a failure mid-sentence ends
that sentence (the worker closes it and reports a TtsError) and the next sentence starts
fresh from the head of the chain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

from services.common import ProviderError, close_stream, count_provider_error
from services.tts.providers.base import TtsProvider

log = logging.getLogger("voxline.tts.fallback")


class FallbackTtsProvider:
    def __init__(self, providers: Sequence[TtsProvider], attempts: int = 2, backoff_s: float = 0.2) -> None:
        self.providers = list(providers)
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.name = ",".join(p.name for p in self.providers)

    async def load(self) -> None:
        for provider in self.providers:
            load = getattr(provider, "load", None)
            if load is not None:
                await load()

    async def synthesize(self, text: str, voice: str) -> AsyncIterator[bytes]:
        failure: ProviderError | None = None
        for index, provider in enumerate(self.providers):
            after = self.providers[index + 1].name if index + 1 < len(self.providers) else ""
            for attempt in range(1, self.attempts + 1):
                spoke = False
                stream = provider.synthesize(text, voice)
                try:
                    async for piece in stream:
                        spoke = spoke or bool(piece)
                        yield piece
                    return
                except ProviderError as exc:
                    failure = exc
                except Exception as exc:  # a provider bug must not silence the line either
                    log.exception("tts provider %s crashed", provider.name)
                    failure = ProviderError(provider.name, "internal", type(exc).__name__)
                finally:
                    await close_stream(stream)
                count_provider_error(failure)
                if spoke:
                    log.error("tts %s; after audio began, so the rest of this sentence is lost", failure)
                    raise failure
                retry = failure.retryable and attempt < self.attempts
                outcome = "retrying" if retry else f"falling back to {after}" if after else "no provider left"
                log.error("tts %s; %s", failure, outcome)
                if not retry:
                    break
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
        assert failure is not None
        raise failure

    async def close(self) -> None:
        for provider in self.providers:
            try:
                await provider.close()
            except Exception:
                log.exception("tts provider %s failed to close", provider.name)
