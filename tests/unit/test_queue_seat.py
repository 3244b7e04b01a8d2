"""A worker's seat in a work queue group (services.common.QueueSeat) on a real
nats-server: leaving it at capacity loses none of the work NATS already sent."""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg

from proto.messages import CallEnded, Message
from services.common import QueueSeat
from tests.unit.bus_probe import Probe, settle
from voxline.bus import Bus

WORK = "test.seat.work"


async def test_work_already_delivered_when_the_seat_is_left_is_still_handled(worker_bus: Bus, probe: Probe) -> None:
    """The second request reached this worker before it left the group: an unsubscribe
    would throw it away (a lost sentence, a caller in silence until a watchdog fires);
    leaving drains it instead. Failed before: the second request was never handled."""
    handled: list[str] = []
    second_pending = asyncio.Event()
    release = asyncio.Event()
    seat: QueueSeat

    async def handler(message: Message, msg: Msg) -> None:
        assert isinstance(message, CallEnded)
        handled.append(message.call_id)
        if message.call_id == "first":
            await second_pending.wait()
            seat.holding(1)  # full: the seat is left while "second" waits behind this one
            await release.wait()

    seat = QueueSeat(worker_bus, WORK, "workers", handler, capacity=1)
    await seat.join()
    await settle(worker_bus)
    for call_id in ("first", "second"):
        await probe.bus.publish(WORK, CallEnded(call_id=call_id, reason="work"))
    sub = seat._sub
    assert sub is not None
    for _ in range(500):  # the client reads both off the socket; "first" is being handled
        if handled == ["first"] and sub.pending_msgs == 1:
            break
        await asyncio.sleep(0.01)
    assert handled == ["first"] and sub.pending_msgs == 1
    second_pending.set()
    for _ in range(500):  # the seat changes in a task of its own
        if not seat.joined:
            break
        await asyncio.sleep(0.01)
    assert not seat.joined
    release.set()
    for _ in range(500):
        if handled == ["first", "second"]:
            break
        await asyncio.sleep(0.01)
    assert handled == ["first", "second"]
    await seat.close()
