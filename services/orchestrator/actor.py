"""The shell around a call's core: one task and one queue per call.

Everything that happens to a call (STT, gateway, brain and TTS messages, timer expiries,
the answer of an STT reassignment) is posted to its queue and handled one event at a time
by `core.step`; this shell stamps the time, then carries out the effects in order. It is
the only code of the call that awaits anything, and it never awaits slow I/O in between
two events: the call record goes to a writer task of its own (the newest record wins),
and an STT reassignment runs beside the call and posts its answer back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import msgspec
from opentelemetry.trace import Span

from proto.messages import MarkPlayed, Order
from proto.records import CALL_RECORDS_BUCKET, CallRecord
from services.orchestrator.call import Call
from services.orchestrator.core import step
from services.orchestrator.effects import (
    CancelTimer,
    Effect,
    Publish,
    ReassignStt,
    SaveRecord,
    StartTimer,
)
from services.orchestrator.events import Event, SttReassigned, TimerFired
from services.orchestrator.metrics import RecordMetrics
from services.orchestrator.spans import CallSpans
from services.orchestrator.states import CallState
from services.orchestrator.timers import Timer
from voxline.bus import Bus
from voxline.telemetry import current_call_id, now_us

log = logging.getLogger("voxline.orchestrator.actor")

# How long the end of a call waits for its last record write (the bus may be going away).
FINAL_WRITE_TIMEOUT_S = 5.0


class CallActor:
    def __init__(
        self,
        bus: Bus,
        call: Call,
        reassign_stt: Callable[[], Awaitable[bool]],
        save_state: Callable[[Call], Awaitable[None]] | None = None,
        call_span: Span | None = None,
        on_record: Callable[[CallRecord], None] | None = None,
    ) -> None:
        self.bus = bus
        self._on_record = on_record  # sees every record written (webhooks); must not block
        self.call = call
        self._spans = CallSpans(call, call_span)
        self._reassign_stt = reassign_stt
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._timers: dict[Timer, asyncio.Task[None]] = {}
        self._beside: set[asyncio.Task[None]] = set()
        self._metrics = RecordMetrics(call.record, call.traceparent)
        # The call, not `self`: a writer holding the actor that holds the writer is a cycle,
        # and each ended call's whole state would wait for a full garbage collection.
        self._writer = RecordWriter(bus, None if save_state is None else lambda: save_state(call))
        # Stamped on every order it sends (proto/ownership.py): receivers drop older ones.
        self.epoch = 0
        # Let go without ending the call: another orchestrator owns it now (or will).
        self.abandoned = False
        self.handing_over = False  # let go on purpose, by a stopping orchestrator

    @property
    def ended(self) -> bool:
        return self.call.state is CallState.ENDED

    def abandon(self) -> None:
        """Stop acting on the call at once, with no last word on the bus or in the KV: the
        lease is someone else's. The caller of `run` cancels its task after this."""
        self.abandoned = True

    def post(self, event: Event) -> None:
        """Queue an event for the call; never blocks, so a bus callback only posts."""
        if not self.ended:
            self._queue.put_nowait(event)

    async def run(self) -> None:
        """Handle the call's events until it ends, then write its final record."""
        current_call_id.set(self.call.call_id)
        self._writer.start()
        for pending in self.call.timers:  # a resumed snapshot's timers go on where they were
            self._start_timer(pending.timer, pending.timer_id, pending.deadline_us)
        try:
            while not self.ended:
                event = await self._queue.get()
                try:
                    effects = step(self.call, event, now_us())
                except Exception:
                    log.exception("handling %s failed", type(event).__name__)
                    continue
                if effects or isinstance(event, MarkPlayed):
                    self._writer.snapshot()  # what a new owner resumes from
                self._spans.turns_begun(self.call)
                for effect in effects:
                    if self.abandoned:
                        return
                    await self._carry_out(effect)
                self._spans.turns_ended(self.call)
        finally:
            self._spans.end(self.call, handed_over=self.abandoned)
            for task in [*self._timers.values(), *self._beside]:
                task.cancel()
            self._timers.clear()
            if self.abandoned:
                self._writer.discard()
            else:
                await self._writer.close(FINAL_WRITE_TIMEOUT_S)

    async def _carry_out(self, effect: Effect) -> None:
        try:
            match effect:
                case Publish():
                    headers = self._spans.headers(effect)
                    message = effect.message
                    if isinstance(message, Order) and self.epoch:
                        message = msgspec.structs.replace(message, epoch=self.epoch)
                    await self.bus.publish(effect.subject, message, headers)
                case StartTimer():
                    self._start_timer(effect.timer, effect.timer_id, effect.deadline_us)
                case CancelTimer():
                    task = self._timers.pop(effect.timer, None)
                    if task is not None:
                        task.cancel()
                case SaveRecord():
                    self._writer.save(effect.record)
                    self._metrics.saw(effect.record)
                    if self._on_record is not None:
                        self._on_record(effect.record)
                case ReassignStt():
                    self._beside_the_call(self._reassign())
        except Exception:
            log.exception("%s failed", type(effect).__name__)

    def _start_timer(self, timer: Timer, timer_id: int, deadline_us: int) -> None:
        old = self._timers.pop(timer, None)
        if old is not None:
            old.cancel()

        async def expire() -> None:
            await asyncio.sleep(max(0.0, (deadline_us - now_us()) / 1e6))
            if self._timers.get(timer) is asyncio.current_task():
                del self._timers[timer]
            self.post(TimerFired(timer, timer_id))

        self._timers[timer] = asyncio.create_task(expire())

    async def _reassign(self) -> None:
        self.post(SttReassigned(ok=await self._reassign_stt()))

    def _beside_the_call(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("work beside the call failed")

        task = asyncio.create_task(run())
        self._beside.add(task)
        task.add_done_callback(self._beside.discard)


class RecordWriter:
    """Writes a call's record, and its state snapshot, to the KV store off the call's task.
    Writes are best effort (the call goes on without them) and collapse: while one is in
    flight, only the newest record waits, and it is encoded when it is written, so it is
    never older than asked. The snapshot is taken when it is written too, between two of
    the call's events (the writer runs only while the actor awaits), so it is consistent."""

    def __init__(self, bus: Bus, save_state: Callable[[], Awaitable[None]] | None = None) -> None:
        self._bus = bus
        self._save_state = save_state
        self._latest: CallRecord | None = None
        self._state_wanted = False
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def save(self, record: CallRecord) -> None:
        self._latest = record
        self._wake.set()

    def snapshot(self) -> None:
        if self._save_state is not None:
            self._state_wanted = True
            self._wake.set()

    def discard(self) -> None:
        """Drop what waits and stop: the call is not ours to write any more."""
        self._latest, self._state_wanted = None, False
        if self._task is not None:
            self._task.cancel()

    async def close(self, timeout_s: float) -> None:
        """Write what is still waiting, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._task, timeout_s)
        except TimeoutError:
            log.error("the final call record was not written within %.0fs", timeout_s)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            record, self._latest = self._latest, None
            if record is not None:
                try:
                    await self._bus.kv_put(CALL_RECORDS_BUCKET, record.call_id, record)
                except Exception as exc:
                    log.error("could not save the call record: %s", exc)
            if self._state_wanted and self._save_state is not None:
                self._state_wanted = False
                try:
                    await self._save_state()
                except Exception as exc:
                    log.error("could not save the call's state: %s", exc)
            if self._closing and self._latest is None and not self._state_wanted:
                return
