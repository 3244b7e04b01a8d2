"""How a process drains on SIGTERM: finished work ends the drain, a deadline or a second
signal cuts it short, and TurnTasks reports idle only once its last task is done."""

from __future__ import annotations

import asyncio

import msgspec

from services.common import TurnTasks
from voxline.service import drain_within


class _Holder:
    """A worker holding one call until `hang_up` is set."""

    def __init__(self) -> None:
        self.hang_up = asyncio.Event()
        self.drained = False

    def ready(self) -> bool:
        return not self.hang_up.is_set()

    def status(self) -> msgspec.Struct:
        raise NotImplementedError

    async def drain(self) -> None:
        await self.hang_up.wait()
        self.drained = True

    async def stop(self) -> None:
        pass


async def test_the_drain_ends_when_the_held_work_ends() -> None:
    holder, now = _Holder(), asyncio.Event()
    drain = asyncio.create_task(drain_within("stt", holder, 60.0, now))
    await asyncio.sleep(0)
    assert not drain.done()  # still holding the call
    holder.hang_up.set()
    assert await drain is True and holder.drained


async def test_a_second_signal_stops_the_drain_at_once() -> None:
    holder, now = _Holder(), asyncio.Event()
    drain = asyncio.create_task(drain_within("orchestrator", holder, 60.0, now))
    await asyncio.sleep(0)
    now.set()
    assert await drain is False and not holder.drained


async def test_the_deadline_stops_the_drain() -> None:
    holder = _Holder()
    assert await drain_within("gateway", holder, 0.01, asyncio.Event()) is False
    assert not holder.drained


async def test_a_failing_drain_is_reported_not_raised() -> None:
    class Broken(_Holder):
        async def drain(self) -> None:
            raise RuntimeError("bus gone")

    assert await drain_within("brain", Broken(), 60.0, asyncio.Event()) is False


async def _until(event: asyncio.Event) -> None:
    await event.wait()


async def test_turn_tasks_are_idle_only_after_the_last_task() -> None:
    tasks = TurnTasks()
    first, second = asyncio.Event(), asyncio.Event()
    tasks.start("CA1", 1, _until(first), name="a")
    tasks.start("CA2", 1, _until(second), name="b")
    idle = asyncio.create_task(tasks.idle())
    first.set()
    for _ in range(5):  # let the first task and the waiter run
        await asyncio.sleep(0)
    assert not idle.done()  # CA2's task still works
    tasks.start("CA3", 2, asyncio.sleep(0), name="c")  # work taken meanwhile counts too
    second.set()
    await idle
    assert tasks.active() == 0


async def test_a_cancelled_turn_does_not_hold_the_drain() -> None:
    tasks = TurnTasks()
    tasks.start("CA1", 1, _until(asyncio.Event()), name="a")
    tasks.cancel_turns("CA1", 1)
    await tasks.idle()  # returns: cancelled work is unwinding, not held
