"""Pieces the stt, brain and tts workers share: log context per call, trace headers, and
the registry of per-turn tasks that makes cancellation by turn id exact.

Cancellation is the heart of barge-in: once the orchestrator cancels a turn, nothing of
it may reach the caller. Messages on different subjects are handled by different
subscription tasks, so a `BrainTurn` or `Synthesize` can be handled *after* the
`TurnCancel` or `CallEnded` that should have stopped it; the registry therefore
remembers what was cancelled and refuses late work instead of only cancelling tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Coroutine, Iterator
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Counter

from proto.headers import TRACEPARENT, call_headers
from voxline.telemetry import current_call_id, current_turn_id, new_traceparent

log = logging.getLogger("voxline.services")

# Calls remembered after they ended or had turns cancelled; far more than one worker
# serves at once, so a late message for a finished call is still recognised.
REMEMBERED_CALLS = 10_000

# On shutdown, in-flight turns get this long to finish before they are cancelled:
# a sentence cut off mid-synthesis would leave the caller waiting on its closing frame.
STOP_GRACE_S = 5.0


@contextlib.contextmanager
def call_context(call_id: str, turn_id: int = 0) -> Iterator[None]:
    """Log lines inside carry the call (and turn) id; restored afterwards, because a
    subscription task handles many calls one after the other."""
    call_token = current_call_id.set(call_id)
    turn_token = current_turn_id.set(turn_id)
    try:
        yield
    finally:
        current_turn_id.reset(turn_token)
        current_call_id.reset(call_token)


def outgoing_headers(msg: Msg | None, call_id: str, turn_id: int | None, span: str) -> dict[str, str]:
    """Headers for what we publish on behalf of `msg`: call and turn ids, and a child
    span of the sender's trace when it sent one."""
    parent = (msg.headers or {}).get(TRACEPARENT) if msg is not None else None
    traceparent = new_traceparent(parent, span) if parent else None
    return call_headers(call_id, turn_id, traceparent)


async def unsubscribe_quietly(sub: Subscription) -> None:
    """Release a subscription; during shutdown or reconnects NATS may refuse, which is fine."""
    try:
        await sub.unsubscribe()
    except Exception as exc:
        log.debug("unsubscribe of %s failed: %s", sub.subject, exc)


async def close_stream(stream: object) -> None:
    """Close a provider's async generator now rather than at garbage collection, so its
    HTTP stream or model run ends with the turn (also when we stopped reading early)."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.debug("closing a provider stream failed", exc_info=True)


class RecentCalls:
    """A bounded map of recently seen call ids to an int (LRU), so memory stays flat."""

    def __init__(self, limit: int = REMEMBERED_CALLS) -> None:
        self._limit = limit
        self._items: OrderedDict[str, int] = OrderedDict()

    def get(self, call_id: str, default: int) -> int:
        return self._items.get(call_id, default)

    def put(self, call_id: str, value: int) -> None:
        self._items[call_id] = value
        self._items.move_to_end(call_id)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def pop(self, call_id: str) -> None:
        self._items.pop(call_id, None)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._items


class TurnTasks:
    """Tasks working on a (call, turn), cancellable by turn id or by call."""

    def __init__(self) -> None:
        self._tasks: dict[str, dict[asyncio.Task[None], int]] = {}
        self._unwinding: set[asyncio.Task[None]] = set()  # cancelled, not finished yet
        self._cancelled_upto = RecentCalls()
        self._ended = RecentCalls()

    def accepts(self, call_id: str, turn_id: int) -> bool:
        """False for work of an ended call or of a turn already cancelled."""
        return call_id not in self._ended and not self.is_cancelled(call_id, turn_id)

    def is_cancelled(self, call_id: str, turn_id: int) -> bool:
        return call_id in self._ended or turn_id <= self._cancelled_upto.get(call_id, -1)

    def start(self, call_id: str, turn_id: int, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        tasks = self._tasks.setdefault(call_id, {})
        tasks[task] = turn_id
        task.add_done_callback(lambda done: self._forget(call_id, done))
        return task

    def _forget(self, call_id: str, task: asyncio.Task[None]) -> None:
        self._unwinding.discard(task)
        tasks = self._tasks.get(call_id)
        if tasks is not None:
            tasks.pop(task, None)
            if not tasks:
                del self._tasks[call_id]

    def _cancel(self, call_id: str, victims: list[asyncio.Task[None]]) -> int:
        """Cancel and stop counting them as work at once; they unwind in the background."""
        tasks = self._tasks.get(call_id, {})
        for task in victims:
            task.cancel()
            tasks.pop(task, None)
            if not task.done():
                self._unwinding.add(task)
        if not tasks:
            self._tasks.pop(call_id, None)
        return len(victims)

    def cancel_turns(self, call_id: str, upto_turn_id: int) -> int:
        """Cancel every task of the call whose turn_id <= upto_turn_id; return how many."""
        if upto_turn_id > self._cancelled_upto.get(call_id, -1):
            self._cancelled_upto.put(call_id, upto_turn_id)
        victims = [task for task, turn_id in self._tasks.get(call_id, {}).items() if turn_id <= upto_turn_id]
        return self._cancel(call_id, victims)

    def end_call(self, call_id: str) -> int:
        """Cancel all of the call's tasks and refuse its work from now on; return how many."""
        self._ended.put(call_id, 1)
        self._cancelled_upto.pop(call_id)
        return self._cancel(call_id, list(self._tasks.get(call_id, {})))

    def active(self) -> int:
        return sum(len(tasks) for tasks in self._tasks.values())

    def turns(self) -> list[dict[str, Any]]:
        """What status() shows: each call with the turn ids in flight."""
        return [{"call_id": call_id, "turn_ids": sorted(set(tasks.values()))} for call_id, tasks in self._tasks.items()]

    async def drain(self, grace_s: float = STOP_GRACE_S) -> None:
        """Let in-flight tasks finish for up to `grace_s`, then cancel the rest."""
        pending = [task for tasks in self._tasks.values() for task in tasks]
        if pending:
            _, still_running = await asyncio.wait(pending, timeout=grace_s)
            for task in still_running:
                task.cancel()
        if leftovers := [task for task in (*pending, *self._unwinding) if not task.done()]:
            await asyncio.wait(leftovers)


class ProviderUnavailable(RuntimeError):
    """The configured provider cannot be used by this build or configuration."""


def resolve_provider(kind: str, name: str, profile: str, by_profile: dict[str, str], known: tuple[str, ...]) -> str:
    """The provider to use: `name` when set, else the profile's choice; unknown names fail
    at startup with the list of valid ones rather than on the first call."""
    chosen = name.strip().lower() or by_profile.get(profile, "")
    if chosen not in known:
        raise ProviderUnavailable(
            f"unknown {kind} provider {chosen!r} (profile {profile!r}); choose one of {', '.join(known)}"
        )
    return chosen


PROVIDER_ERRORS = Counter(
    "voxline_provider_errors_total", "Errors of cloud/local providers, by provider and kind.", ["provider", "kind"]
)

# What a provider error is, and whether trying again soon may help.
RETRYABLE_KINDS = frozenset({"rate_limited", "server", "dropped"})


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
    PROVIDER_ERRORS.labels(provider=error.provider, kind=error.kind).inc()
