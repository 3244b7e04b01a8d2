"""Slow consumers on a real nats-server: a call's subscription holds a bounded backlog,
and what its stuck handler makes nats-py drop is counted per kind of subject (no call id)
and logged once, not once per message."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nats.aio.msg import Msg
from prometheus_client import REGISTRY

from proto import subjects
from proto.messages import Dtmf, Message
from tests.unit.bus_probe import Probe, settle
from voxline.bus import PER_CALL_PENDING_MSGS, SHARED_PENDING_MSGS, Bus, pending_limits

KIND = "vx1.call.*.gateway"


def dropped(kind: str = KIND) -> float:
    return REGISTRY.get_sample_value("voxline_bus_slow_consumers_total", {"subject": kind}) or 0.0


async def test_a_stuck_handler_on_a_call_subject_is_counted_by_kind_and_logged_once(
    worker_bus: Bus, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    release = asyncio.Event()
    handled = 0

    async def stuck(_message: Message, _msg: Msg) -> None:
        nonlocal handled
        handled += 1
        await release.wait()

    before = dropped()
    sub = await worker_bus.subscribe(subjects.gateway_events("CAslow"), stuck)
    await settle(worker_bus)
    extra = 5
    gateway_event = Dtmf(call_id="CAslow", digit="1", at_us=0)
    await probe.publish(subjects.gateway_events("CAslow"), gateway_event)
    for _ in range(500):
        if handled:
            break
        await asyncio.sleep(0.01)
    assert handled == 1  # the handler is stuck on the first message
    with caplog.at_level(logging.WARNING, logger="voxline.bus"):
        # PER_CALL_PENDING_MSGS wait behind the stuck one; the rest are dropped.
        for _ in range(PER_CALL_PENDING_MSGS + extra):
            await probe.publish(subjects.gateway_events("CAslow"), gateway_event)
        await settle(probe.bus)
        for _ in range(500):  # nats-py reports each drop through its error callback, as it reads them
            if dropped() - before >= extra:
                break
            await asyncio.sleep(0.01)
    release.set()
    await sub.unsubscribe()
    assert dropped() - before == extra
    assert REGISTRY.get_sample_value("voxline_bus_slow_consumers_total", {"subject": "vx1.call.CAslow.gateway"}) is None
    assert sub.pending_msgs <= PER_CALL_PENDING_MSGS
    warnings = [r.getMessage() for r in caplog.records if "slow consumer" in r.getMessage()]
    assert warnings == [f"slow consumer on {KIND}: a handler fell behind and a message was dropped"]


def test_pending_limits_are_small_for_a_call_and_large_for_shared_subjects() -> None:
    assert pending_limits(subjects.audio_out("CA1"))[0] == PER_CALL_PENDING_MSGS
    assert pending_limits(subjects.ALL_TURN_CANCELS)[0] == SHARED_PENDING_MSGS
    assert pending_limits(subjects.TTS_SYNTHESIZE)[0] == SHARED_PENDING_MSGS


def test_subject_kinds_are_bounded() -> None:
    assert subjects.kind_of(subjects.audio_out("CA1")) == "vx1.call.*.audio.out"
    assert subjects.kind_of(subjects.turn_cancel("CA2")) == subjects.kind_of(subjects.ALL_TURN_CANCELS)
    assert subjects.kind_of(subjects.stt_release("host-123")) == "vx1.stt.release.*"
    assert subjects.kind_of(subjects.CALL_START) == subjects.CALL_START
    assert subjects.kind_of("_INBOX.x1y2.z3") == "_INBOX"
    assert subjects.kind_of("vx1.call.CA1.made.up") == subjects.kind_of("anything.else") == "other"
