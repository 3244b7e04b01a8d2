"""What an LLM provider must offer the brain worker.

`stream` is an async generator of text deltas, so cancelling the consuming task (a
barge-in) raises inside the generator at its current await and closes the provider's
HTTP stream there: no tokens keep flowing for a reply nobody will hear.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from proto.messages import BrainTurn


class BrainProvider(Protocol):
    name: str

    def stream(self, turn: BrainTurn) -> AsyncIterator[str]:
        """The reply to `turn` as text deltas, in order."""
        ...

    async def close(self) -> None:
        """Release shared clients when the worker stops."""
        ...
