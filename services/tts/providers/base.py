"""What a TTS provider must offer the worker.

Providers stream 8 kHz mu-law in whatever pieces they produce; the worker re-chunks them
for the phone line. `synthesize` is an async generator, so cancelling the consuming task
(a barge-in) closes the provider's stream at its current await.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from services.providers import Provider


class TtsProvider(Provider, Protocol):
    def synthesize(self, text: str, voice: str) -> AsyncIterator[bytes]:
        """`text` spoken by `voice` (provider default when empty) as 8 kHz mu-law bytes."""
        ...
