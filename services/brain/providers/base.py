"""What an LLM provider must offer the brain worker.

`stream` is an async generator of text deltas, so cancelling the consuming task (a
barge-in) raises inside the generator at its current await and closes the provider's
HTTP stream there: no tokens keep flowing for a reply nobody will hear.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from proto.messages import AgentAction, BrainTurn
from services.providers import Provider


@dataclass(frozen=True)
class ReplyAction:
    """What to do once the reply was heard (a tool call of the model): it travels in
    ReplyDone, so the orchestrator acts only after the last words were played."""

    action: AgentAction
    arg: str = ""


class BrainProvider(Provider, Protocol):
    def stream(self, turn: BrainTurn) -> AsyncIterator[str | ReplyAction]:
        """The reply to `turn` as text deltas, in order; at most one ReplyAction, last."""
        ...
