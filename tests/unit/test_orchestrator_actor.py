"""The actor's shell over a real nats-server: it publishes the core's effects with the
call's headers, runs the core's timers as tasks whose expiries come back as events, runs an
STT reassignment beside the call, and ends with the call."""

from __future__ import annotations

import asyncio
import gc
import weakref

from proto import CALL_ID as CALL_ID_HEADER
from proto import TURN_ID, subjects
from proto.messages import CallStopped, SttError, Synthesize
from services.common import Fence
from services.orchestrator.actor import CallActor
from services.orchestrator.call import Call, CallLimits
from services.orchestrator.events import Greet
from services.orchestrator.states import CallState
from tests.unit.bus_probe import Probe
from tests.unit.orchestrator_driver import CALL_ID, GREETING, Driver
from voxline.bus import Bus
from voxline.telemetry import now_us


def synthesized(probe: Probe) -> list[Synthesize]:
    return [s for s in probe.of(Synthesize) if s.call_id == CALL_ID]


async def test_the_shell_carries_out_effects_and_timers_over_the_bus(worker_bus: Bus, probe: Probe) -> None:
    call = Driver(limits=CallLimits(tts_timeout_s=0.05)).call  # no TTS worker answers here
    reassignments: list[int] = []

    async def reassign_stt() -> bool:
        reassignments.append(1)
        return False  # no other STT worker

    actor = CallActor(worker_bus, call, reassign_stt)
    run = asyncio.create_task(actor.run())
    actor.post(Greet(call_start_us=now_us()))

    # Each sentence of the greeting: asked, asked again (attempt 1), then skipped (attempt 2),
    # each step started by a timer task posting its expiry back to the call.
    wanted = {(seq, attempt) for seq in (0, 1) for attempt in (0, 1, 2)}
    await probe.until(lambda: {(s.seq, s.attempt) for s in synthesized(probe)} >= wanted, "retries and skips")
    greeting = [s for s in probe.received() if isinstance(s.item, Synthesize) and s.item.turn_id == 1]
    assert {s.subject for s in greeting} == {subjects.TTS_SYNTHESIZE}
    assert all(s.headers[CALL_ID_HEADER] == CALL_ID and s.headers[TURN_ID] == "1" for s in greeting)
    sent = {(m.seq, m.attempt, m.text) for m in synthesized(probe) if m.turn_id == 1}
    assert sent == {(0, 0, GREETING), (0, 1, GREETING), (0, 2, ""), (1, 0, ""), (1, 1, ""), (1, 2, "")}

    # The STT worker let the call go and no other takes it: the caller is told, politely.
    actor.post(SttError(call_id=CALL_ID, message="provider closed the stream"))
    failure = call.agent.failure_message
    await probe.until(lambda: any(s.text == failure for s in synthesized(probe)), "the failure message")
    assert reassignments == [1]

    actor.post(CallStopped(call_id=CALL_ID, reason="caller hung up", at_us=now_us()))
    await asyncio.wait_for(run, timeout=10)
    assert call.state is CallState.ENDED and call.timers == []
    assert call.record.status == "ended" and call.record.end_reason == "caller hung up"
    actor.post(SttError(call_id=CALL_ID, message="late"))  # an ended call takes nothing more


async def test_every_order_carries_the_owner_s_epoch(worker_bus: Bus, probe: Probe) -> None:
    call = Driver().call

    async def no_reassign() -> bool:
        return False

    actor = CallActor(worker_bus, call, no_reassign)
    actor.epoch = 3  # the third orchestrator to own the call
    run = asyncio.create_task(actor.run())
    actor.post(Greet(call_start_us=now_us()))
    await probe.until(lambda: len(synthesized(probe)) >= 2, "the greeting's sentences")
    assert {s.epoch for s in synthesized(probe)} == {3}
    actor.post(CallStopped(call_id=CALL_ID, reason="caller hung up", at_us=now_us()))
    await asyncio.wait_for(run, timeout=10)


async def test_an_ended_call_s_actor_is_freed_without_the_cycle_collector(worker_bus: Bus, probe: Probe) -> None:
    """Each ended call's whole state (turns, record, spans) sat in a reference cycle (the
    record writer's snapshot callback held the actor), waiting for a full collection that
    a busy orchestrator runs rarely: about 90 objects per call in a 40-call soak."""
    saved: list[str] = []

    async def save_state(call: Call) -> None:
        saved.append(call.call_id)

    async def no_reassign() -> bool:
        return False

    actor = CallActor(worker_bus, Driver().call, no_reassign, save_state)
    run = asyncio.create_task(actor.run())
    actor.post(Greet(call_start_us=now_us()))
    await probe.until(lambda: len(synthesized(probe)) >= 2, "the greeting's sentences")
    gc.collect()
    gc.disable()  # from here on only reference counting frees anything
    try:
        actor.post(CallStopped(call_id=CALL_ID, reason="caller hung up", at_us=now_us()))
        await asyncio.wait_for(run, timeout=10)
        assert saved and saved[0] == CALL_ID  # the snapshot callback was the actor's to call
        ref = weakref.ref(actor)
        del actor, run
        assert ref() is None, "the ended call's actor waits for the cycle collector"
    finally:
        gc.enable()


def test_the_fence_drops_orders_older_than_the_newest_epoch_seen() -> None:
    fence = Fence()
    assert fence.admits("CA1", 1) and fence.admits("CA1", 1)
    assert fence.admits("CA1", 2)  # a takeover
    assert not fence.admits("CA1", 1)  # the old owner, back from a pause
    assert fence.admits("CA1", 0)  # unfenced (no ownership epoch): admitted
    assert fence.admits("CA2", 1)  # per call
    assert fence.admits("CA1", 2)
