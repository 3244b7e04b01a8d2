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
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry.trace import Span, use_span
from prometheus_client import Gauge

from proto import subjects
from proto.headers import TRACEPARENT, call_headers
from proto.messages import CallEnded, Message, TurnCancel
from services.providers import Provider, ProviderError, close_provider, close_stream
from voxline import tracing
from voxline.bus import Bus, MessageHandler
from voxline.telemetry import current_call_id, current_turn_id

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


def outgoing_headers(msg: Msg | None, call_id: str, turn_id: int | None) -> dict[str, str]:
    """Headers for what we publish on behalf of `msg` when no span of ours does the work:
    call and turn ids, and the sender's trace context handed on as it came."""
    traceparent = (msg.headers or {}).get(TRACEPARENT) if msg is not None else None
    return call_headers(call_id, turn_id, traceparent)


async def traced(span: Span, work: Awaitable[None]) -> None:
    """Run `work` with `span` current, and end the span when the work really ends: done,
    failed, or cancelled by a barge-in or the end of the call."""
    with use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        try:
            await work
        except BaseException as exc:
            tracing.end_failed(span, exc)
            raise
    span.end()


async def unsubscribe_quietly(sub: Subscription) -> None:
    """Release a subscription; during shutdown or reconnects NATS may refuse, which is fine."""
    try:
        await sub.unsubscribe()
    except Exception as exc:
        log.debug("unsubscribe of %s failed: %s", sub.subject, exc)


async def drain_quietly(sub: Subscription, timeout_s: float = 2.0) -> None:
    """Leave a queue group without losing what NATS already delivered: the server stops
    sending, and the messages on their way are handled first. Without the bus (or if that
    takes too long) the subscription is simply dropped."""
    try:
        await asyncio.wait_for(sub.drain(), timeout_s)  # type: ignore[no-untyped-call]
    except Exception as exc:
        log.debug("drain of %s failed (%s): unsubscribing", sub.subject, exc)
        await unsubscribe_quietly(sub)


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


class QueueSeat:
    """A worker's seat in a work queue group, held only while it has room: at capacity it
    leaves the group, so NATS gives new work to the others (and a caller is told "busy" when
    nobody has room, instead of work piling up where it will be late), and it joins again
    once it is below capacity. Capacity 0 = no limit.

    Changes are made in a task of their own: a worker finds itself full inside the queue's
    own callback, and unsubscribing from there would cancel that callback. Leaving drains
    the subscription: work NATS already sent this worker is still handled (a little over
    capacity), since an unsubscribe would throw it away and a sentence or a call would be
    lost until a watchdog noticed."""

    def __init__(self, bus: Bus, subject: str, queue: str, handler: MessageHandler, capacity: int) -> None:
        self.bus, self.subject, self.queue, self.handler, self.capacity = bus, subject, queue, handler, capacity
        self._sub: Subscription | None = None
        self._closed = False
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def joined(self) -> bool:
        return self._sub is not None

    async def join(self) -> None:
        async with self._lock:
            if self._sub is None and not self._closed:
                self._sub = await self.bus.subscribe(self.subject, self.handler, queue=self.queue)

    async def _leave(self) -> None:
        async with self._lock:
            if self._sub is not None:
                sub, self._sub = self._sub, None
                await drain_quietly(sub)

    def holding(self, held: int) -> None:
        """The worker now holds `held` units of work: leave or join accordingly."""
        full = bool(self.capacity) and held >= self.capacity
        if full == (self._sub is None) or self._closed:
            return
        if full:
            log.warning("at capacity (%d): leaving the %s queue", self.capacity, self.queue)
        else:
            log.info("below capacity again: back in the %s queue", self.queue)
        task = asyncio.create_task(self._leave() if full else self.join())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        """Leave for good (a drain): no later `holding` brings the seat back."""
        self._closed = True
        await self._leave()


class Fence:
    """The newest ownership epoch seen per call (proto/ownership.py): an order with an
    older epoch comes from an owner that was replaced (it was paused or cut off meanwhile)
    and is dropped. Epoch 0 is an unfenced order."""

    def __init__(self) -> None:
        self._newest = RecentCalls()

    def admits(self, call_id: str, epoch: int) -> bool:
        newest = self._newest.get(call_id, 0)
        if epoch and epoch < newest:
            log.warning("dropped an order of a replaced owner (epoch %d, the call is at %d)", epoch, newest)
            return False
        if epoch > newest:
            self._newest.put(call_id, epoch)
        return True


class TurnsInFlight(msgspec.Struct, frozen=True):
    call_id: str
    turn_ids: list[int]


class TurnTasks:
    """Tasks working on a (call, turn), cancellable by turn id or by call. `changed` is
    called whenever the number of active tasks may have changed (admission control)."""

    def __init__(self, changed: Callable[[], None] | None = None) -> None:
        self._changed = changed or (lambda: None)
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
        self._changed()
        return task

    def _forget(self, call_id: str, task: asyncio.Task[None]) -> None:
        self._unwinding.discard(task)
        tasks = self._tasks.get(call_id)
        if tasks is not None:
            tasks.pop(task, None)
            if not tasks:
                del self._tasks[call_id]
        self._changed()

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
        if victims:
            self._changed()
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

    def turns(self) -> list[TurnsInFlight]:
        """What status() shows: each call with the turn ids in flight."""
        return [TurnsInFlight(call_id, sorted(set(tasks.values()))) for call_id, tasks in self._tasks.items()]

    async def idle(self) -> None:
        """Return once no task is working (tasks started meanwhile are waited for too)."""
        while pending := [task for tasks in self._tasks.values() for task in tasks]:
            await asyncio.wait(pending)

    async def drain(self, grace_s: float = STOP_GRACE_S) -> None:
        """Let in-flight tasks finish for up to `grace_s`, then cancel the rest."""
        pending = [task for tasks in self._tasks.values() for task in tasks]
        if pending:
            _, still_running = await asyncio.wait(pending, timeout=grace_s)
            for task in still_running:
                task.cancel()
        if leftovers := [task for task in (*pending, *self._unwinding) if not task.done()]:
            await asyncio.wait(leftovers)


class Launchable(Protocol):
    @property
    def provider(self) -> Provider: ...

    async def start(self) -> None: ...


W = TypeVar("W", bound=Launchable)


async def launch(worker: W) -> W:
    """Load the provider's models, then subscribe: a worker is ready only once the first
    caller would not wait on a model load."""
    await worker.provider.load()
    await worker.start()
    return worker


class TurnWorkerStatus(msgspec.Struct, frozen=True):
    provider: str
    active: int  # requests being worked on: turns (brain) or sentences (tts)
    turns: list[TurnsInFlight]
    worker_id: str = ""  # the instance id it reports progress under (SynthesisProgress)
    capacity: int = 0  # most requests at once (0 = no limit)
    in_queue: bool = True  # False while at capacity (or draining): NATS gives work to the others


class TurnRequest(Protocol):
    @property
    def call_id(self) -> str: ...

    @property
    def turn_id(self) -> int: ...

    @property
    def epoch(self) -> int: ...


R = TypeVar("R", bound=TurnRequest)
P = TypeVar("P", bound=Provider)
Item = TypeVar("Item")


@dataclass(frozen=True)
class WorkKind:
    """What a TurnWorker takes and how it names it in logs and errors."""

    service: str  # "brain" | "tts"
    subject: str  # the work subject, served by a queue group
    queue: str
    unit: str  # what one request is: "reply" | "sentence"
    output: str  # what its provider streams: "output" | "audio"


class TurnWorker(Generic[R, P]):
    """The brain and TTS workers: requests from a queue group, one asyncio task each,
    cancelled by turn id (barge-in) or call end; `work` is what differs.

    Cancelling a task closes its provider stream, so a reply nobody will hear stops
    costing tokens or synthesis, and nothing more of it is published.

    A worker holds at most `capacity` requests (0 = no limit): at capacity it leaves the
    work queue group (`QueueSeat`), so NATS hands new turns or sentences to a worker with
    room. A request NATS had already sent on its way when the worker left is still taken
    (a little over capacity beats a lost sentence); one that finds no worker with room is
    lost, and the orchestrator's watchdog answers for it (apology, retry, skip).
    """

    def __init__(
        self,
        bus: Bus,
        provider: P,
        kind: WorkKind,
        request: type[R],
        stall_s: float,
        gauge: Gauge,
        capacity: int = 0,
        worker_id: str = "",
    ) -> None:
        self.bus = bus
        self.provider = provider
        self.kind = kind
        self.request = request
        self.stall_s = stall_s
        self.worker_id = worker_id
        self.tasks = TurnTasks(changed=lambda: self._seat.holding(self.tasks.active()))
        self.fence = Fence()
        self._seat = QueueSeat(bus, kind.subject, kind.queue, self.on_request, capacity)
        self._control: list[Subscription] = []
        self._ready = False
        self._stopping = False
        gauge.set_function(self.tasks.active)

    async def start(self) -> None:
        # Cancels and call ends first: they must never miss work that is already running.
        self._control = [
            await self.bus.subscribe(subjects.ALL_TURN_CANCELS, self.on_cancel),
            await self.bus.subscribe(subjects.CALL_ENDED, self.on_call_ended),
        ]
        await self._seat.join()
        self._ready = True

    def ready(self) -> bool:
        return self._ready

    def status(self) -> TurnWorkerStatus:
        return TurnWorkerStatus(
            provider=self.provider.name,
            active=self.tasks.active(),
            turns=self.tasks.turns(),
            worker_id=self.worker_id,
            capacity=self._seat.capacity,
            in_queue=self._seat.joined,
        )

    async def work(self, request: R, headers: dict[str, str]) -> None:
        raise NotImplementedError

    def task_name(self, request: R) -> str:
        return f"{self.kind.service}-{request.call_id}-{request.turn_id}"

    def span_attributes(self, request: R) -> tracing.Attributes:
        """What the request's span says besides its call and turn ids (ids only, no words)."""
        return {}

    async def on_request(self, message: Message, msg: Msg) -> None:
        if not isinstance(message, self.request):
            log.warning("ignored %s on %s", type(message).__name__, msg.subject)
            return
        with call_context(message.call_id, message.turn_id):
            if not self.fence.admits(message.call_id, message.epoch):
                return
            if not self.tasks.accepts(message.call_id, message.turn_id):
                log.info("%s of a cancelled turn or ended call; not taken", self.task_name(message))
                return
            span = tracing.start_span(
                self.kind.unit,
                headers=msg.headers,
                call_id=message.call_id,
                turn_id=message.turn_id,
                attributes={"provider": self.provider.name, **self.span_attributes(message)},
            )
            headers = tracing.headers_for(span, message.call_id, message.turn_id)
            work = traced(span, self.work(message, headers))
            self.tasks.start(message.call_id, message.turn_id, work, name=self.task_name(message))

    async def on_cancel(self, message: Message, msg: Msg) -> None:
        if not isinstance(message, TurnCancel):
            log.warning("ignored %s on %s", type(message).__name__, msg.subject)
            return
        with call_context(message.call_id, message.turn_id):
            if not self.fence.admits(message.call_id, message.epoch):
                return
            if cancelled := self.tasks.cancel_turns(message.call_id, message.turn_id):
                log.info(
                    "stopped %d %s(s) up to turn %d: %s", cancelled, self.kind.unit, message.turn_id, message.reason
                )

    async def on_call_ended(self, message: Message, msg: Msg) -> None:
        if not isinstance(message, CallEnded):
            log.warning("ignored %s on %s", type(message).__name__, msg.subject)
            return
        with call_context(message.call_id):
            if cancelled := self.tasks.end_call(message.call_id):
                log.info("call ended (%s); stopped %d %s(s)", message.reason, cancelled, self.kind.unit)

    async def consume(
        self,
        request: R,
        stream: AsyncIterator[Item],
        handle: Callable[[Item], Awaitable[None]],
        fail: Callable[[str], Awaitable[None]],
    ) -> bool:
        """Hand each item of the provider's `stream` to `handle`; True once it ended.

        Any other outcome calls `fail` with a reason for the bus: a provider silent for
        `stall_s` (before its first item or between two) must not leave the caller in
        silence, and a worker stopping mid-request tells the orchestrator so it can
        apologise or retry instead of waiting. A cancelled turn gets nothing.
        """
        name, stall_s = self.provider.name, self.stall_s
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(stall_s) as deadline:
                async for item in stream:
                    await handle(item)
                    deadline.reschedule(loop.time() + stall_s)
            return True
        except asyncio.CancelledError:
            if self._stopping and not self.tasks.is_cancelled(request.call_id, request.turn_id):
                await fail(f"{self.kind.service} worker stopped mid-{self.kind.unit}")
            raise
        except TimeoutError:
            log.error("%s provider %s stalled for %.1fs on call %s", self.kind.service, name, stall_s, request.call_id)
            await fail(f"{name}: no {self.kind.output} for {stall_s}s")
        except ProviderError as exc:  # already logged and counted by the provider chain
            log.error("%s of call %s failed: %s", self.kind.unit, request.call_id, exc)
            await fail(str(exc))
        except Exception as exc:
            log.exception("%s provider %s failed on call %s", self.kind.service, name, request.call_id)
            await fail(f"{name}: {exc}")
        finally:
            await close_stream(stream)
        return False

    async def publish(self, subject: str, message: Message, headers: dict[str, str]) -> None:
        try:
            await self.bus.publish(subject, message, headers)
        except Exception:
            log.exception("could not publish %s", type(message).__name__)

    async def drain(self) -> None:
        """Leave the work queue (a replica takes the next requests) and finish what is in
        flight; cancels and call ends are still heard meanwhile."""
        self._ready = False
        await self._seat.close()
        await self.tasks.idle()

    async def stop(self) -> None:
        """Finish in-flight work (briefly), then cancel the rest, each failing through
        `consume`, so the orchestrator and the caller's playback move on."""
        self._ready = False
        self._stopping = True
        await self._seat.close()
        await self.tasks.drain(STOP_GRACE_S)
        for sub in self._control:
            await unsubscribe_quietly(sub)
        await close_provider(self.provider)
