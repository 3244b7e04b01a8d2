"""What an LLM provider must offer the brain worker.

`stream` is an async generator of typed events: the model's first token (timed), each
complete sentence (cut by `services.brain.sentences`, the one place replies are split),
and at most one action, last. Cancelling the consuming task (a barge-in) raises inside
the generator at its current await and closes the provider's HTTP stream there: no
tokens keep flowing for a reply nobody will hear.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, get_args

from prometheus_client import Counter

from proto.messages import AgentAction, BrainTurn, ToolCallReport
from services.providers import Provider
from voxline.agents.tools import ToolKind

TOOL_CALLS = Counter("voxline_tool_calls_total", "Tool calls of the model, by tool kind.", ["kind"])
for _kind in (*get_args(ToolKind), "unknown"):  # each at zero from the start (the fake brain calls none)
    TOOL_CALLS.labels(kind=_kind)


@dataclass(frozen=True)
class FirstToken:
    """The model produced its first token: latency is measured here, though nothing is
    speakable yet. Not output the caller hears, so a failure after it may still retry."""

    at_us: int


@dataclass(frozen=True)
class Sentence:
    """One complete sentence of the reply, ready for TTS."""

    text: str


@dataclass(frozen=True)
class ReplyAction:
    """What to do once the reply was heard (a tool call of the model): it travels in
    ReplyDone, so the orchestrator acts only after the last words were played."""

    action: AgentAction
    arg: str = ""


@dataclass(frozen=True)
class Usage:
    """Tokens the endpoint reported for one round (OpenAI's last chunk with
    stream_options.include_usage). Not heard: a retry after it is still possible, and the
    failed attempt's tokens count too (they were billed)."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class ToolCalled:
    """A tool call the model made and the brain ran (or refused), for the call record.
    Not heard: a retry after it stays possible, as before reports existed (the record then
    shows the failed try's call too, which did happen)."""

    report: ToolCallReport


BrainEvent = FirstToken | Sentence | ReplyAction | Usage | ToolCalled


def heard(event: BrainEvent) -> bool:
    """Whether the event commits the reply (a retry would repeat or contradict it)."""
    return not isinstance(event, FirstToken | Usage | ToolCalled)


class BrainProvider(Provider, Protocol):
    def stream(self, turn: BrainTurn) -> AsyncIterator[BrainEvent]:
        """The reply to `turn` as events, in order; at most one ReplyAction, last."""
        ...
