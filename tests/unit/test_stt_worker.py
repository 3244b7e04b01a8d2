"""The STT worker's call handling (assign, duplicate assign, call end, provider failure,
liveness ping), the worker in-process on a real bus and a real nats-server."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats.errors
from nats.aio.msg import Msg

from proto import decode, encode, subjects
from proto.audio_frame import AudioFrame
from proto.headers import CALL_ID
from proto.messages import (
    CallEnded,
    CallerAudio,
    CallerAudioRequest,
    SpeechStarted,
    SttAssign,
    SttAssigned,
    SttError,
    SttRelease,
    SttReplay,
)
from services.stt.providers.base import Emit
from services.stt.providers.fake import FakeSttProvider
from services.stt.worker import SttStatus, SttWorker
from tests.unit.bus_probe import NatsServer, Probe, settle
from voxline.audio import FRAME_SAMPLES, pcm16_to_mulaw, tone_pcm16
from voxline.bus import Bus
from voxline.config import SttSettings

SPEECH = pcm16_to_mulaw(tone_pcm16(20))[:FRAME_SAMPLES]
WORKER_ID = "stt-test"
PING = subjects.stt_ping(WORKER_ID)


class CountingProvider(FakeSttProvider):
    """The fake provider, counting the sessions it opens and telling the test when a
    call's session is closed; it can fail to open, or fail on the first audio frame."""

    def __init__(self, settings: SttSettings, fail_open: bool = False, fail_feed: bool = False) -> None:
        super().__init__(settings)
        self.opened = 0
        self.fail_open = fail_open
        self.fail_feed = fail_feed
        self.closed: dict[str, asyncio.Event] = {}

    async def open(self, assign: SttAssign, emit: Emit) -> Any:
        if self.fail_open:
            raise RuntimeError("no capacity")
        self.opened += 1
        session = await super().open(assign, emit)
        closed = self.closed.setdefault(assign.call_id, asyncio.Event())
        close = session.close

        async def close_and_tell() -> None:
            await close()
            closed.set()

        session.close = close_and_tell  # type: ignore[method-assign]
        if self.fail_feed:

            async def broken(frame: AudioFrame) -> None:
                raise RuntimeError("socket closed")

            session.feed = broken  # type: ignore[method-assign]
        return session

    async def wait_closed(self, call_id: str) -> None:
        await asyncio.wait_for(self.closed[call_id].wait(), timeout=5)


async def make_worker(bus: Bus, **flags: bool) -> tuple[SttWorker, CountingProvider]:
    settings = SttSettings(instance_id=WORKER_ID, fake_stt_latency_ms=0)
    provider = CountingProvider(settings, **flags)
    worker = SttWorker(bus, settings, provider)
    await worker.start()
    await settle(bus)
    return worker, provider


def assign(call_id: str = "c1") -> SttAssign:
    return SttAssign(call_id=call_id, agent_id="demo")


def assigned(call_id: str = "c1") -> SttAssigned:
    return SttAssigned(call_id=call_id, worker_id=WORKER_ID, provider="fake")


async def speak(probe: Probe, call_id: str, frames: int) -> None:
    for _ in range(frames):
        await probe.publish_frame(subjects.audio_in(call_id), AudioFrame(SPEECH))


async def test_assign_takes_the_call_once_and_answers_every_time(
    worker_bus: Bus, probe: Probe, nats_server: NatsServer
) -> None:
    worker, provider = await make_worker(worker_bus)
    replies = [await probe.request(subjects.STT_ASSIGN, assign()) for _ in range(2)]

    assert provider.opened == 1
    assert replies == [assigned()] * 2
    assert worker.status().active_calls == 1 and worker.status().calls == ["c1"]
    assert (await nats_server.subscriptions(worker_bus)).count(subjects.audio_in("c1")) == 1
    await worker.stop()


async def test_events_go_to_the_call_subject_with_call_headers(worker_bus: Bus, probe: Probe) -> None:
    worker, _ = await make_worker(worker_bus)
    await probe.request(subjects.STT_ASSIGN, assign())
    await speak(probe, "c1", 2)
    await probe.wait_for(SpeechStarted)

    first = probe.received()[0]
    assert first.subject == subjects.stt_events("c1")
    assert isinstance(first.item, SpeechStarted)
    assert first.headers[CALL_ID] == "c1"
    await worker.stop()


async def test_call_ended_releases_session_and_audio(worker_bus: Bus, probe: Probe, nats_server: NatsServer) -> None:
    worker, provider = await make_worker(worker_bus)
    await probe.request(subjects.STT_ASSIGN, assign())
    await probe.publish(subjects.CALL_ENDED, CallEnded(call_id="c1", reason="hangup"))
    await provider.wait_closed("c1")

    assert subjects.audio_in("c1") not in await nats_server.subscriptions(worker_bus)
    assert worker.status() == SttStatus(provider="fake", active_calls=0, calls=[])
    # A late assign for the ended call is not taken (it would never be released), nor
    # answered; the assign after it, on the same subscription, is handled after it.
    await probe.publish(subjects.STT_ASSIGN, assign())
    assert await probe.request(subjects.STT_ASSIGN, assign("c2")) == assigned("c2")
    assert worker.status().calls == ["c2"] and provider.opened == 2
    await worker.stop()


async def test_an_ended_call_leaves_no_reference_cycle_behind(worker_bus: Bus, probe: Probe) -> None:
    """A call's state must be freed when the call ends, not at the next full garbage
    collection: a busy worker runs those rarely, and a 100-call soak grew about 1 MiB a
    minute with each ended call's session, subscription and buffers in a cycle."""
    worker, provider = await make_worker(worker_bus)
    await probe.request(subjects.STT_ASSIGN, assign())
    await speak(probe, "c1", 2)
    await probe.wait_for(SpeechStarted)
    held = weakref.ref(worker._calls["c1"])
    gc.collect()
    gc.disable()  # from here on only reference counting frees anything
    try:
        await probe.publish(subjects.CALL_ENDED, CallEnded(call_id="c1", reason="hangup"))
        await provider.wait_closed("c1")
        await settle(worker_bus)  # the subscription's message task ends
        assert held() is None, "the ended call's state waits for the cycle collector"
    finally:
        gc.enable()
    await worker.stop()


async def test_a_release_lets_one_call_go_and_a_later_assign_takes_it_again(
    worker_bus: Bus, probe: Probe, nats_server: NatsServer
) -> None:
    worker, provider = await make_worker(worker_bus)
    for call_id in ("c1", "c2"):
        await probe.request(subjects.STT_ASSIGN, assign(call_id))
    # The orchestrator thought this worker dead and moved c1: it must stop listening to it.
    await probe.publish(subjects.stt_release(WORKER_ID), SttRelease(call_id="c1", reason="moved"))
    await provider.wait_closed("c1")
    assert worker.status().calls == ["c2"]
    assert subjects.audio_in("c1") not in await nats_server.subscriptions(worker_bus)
    # Unlike an ended call, a released one may come back to this worker.
    assert await probe.request(subjects.STT_ASSIGN, assign("c1")) == assigned("c1")
    assert worker.status().calls == ["c1", "c2"]
    await worker.stop()


async def test_provider_that_cannot_open_answers_with_an_error(worker_bus: Bus, probe: Probe) -> None:
    worker, _ = await make_worker(worker_bus, fail_open=True)
    reply = await probe.request(subjects.STT_ASSIGN, assign())
    assert isinstance(reply, SttError)
    assert "no capacity" in reply.message
    assert worker.status().active_calls == 0
    await worker.stop()


async def test_failing_session_reports_once_and_releases_the_call(
    worker_bus: Bus, probe: Probe, nats_server: NatsServer
) -> None:
    worker, provider = await make_worker(worker_bus, fail_feed=True)
    await probe.request(subjects.STT_ASSIGN, assign())
    await speak(probe, "c1", 5)
    await provider.wait_closed("c1")
    await probe.caught_up(worker_bus)

    errors = probe.of(SttError)
    assert len(errors) == 1 and "socket closed" in errors[0].message
    assert [s.subject for s in probe.received()] == [subjects.stt_events("c1")]
    assert subjects.audio_in("c1") not in await nats_server.subscriptions(worker_bus)
    assert worker.status().active_calls == 0
    await worker.stop()


async def test_ping_is_answered_with_an_empty_reply(worker_bus: Bus, probe: Probe) -> None:
    worker, _ = await make_worker(worker_bus)
    reply = await probe.bus.nc.request(PING, b"", timeout=5)
    assert reply.data == b""
    await worker.stop()


async def test_stop_releases_every_call(worker_bus: Bus, probe: Probe, nats_server: NatsServer) -> None:
    worker, _ = await make_worker(worker_bus)
    await probe.request(subjects.STT_ASSIGN, assign())
    await probe.request(subjects.STT_ASSIGN, assign("c2"))
    held = {subjects.audio_in("c1"), subjects.audio_in("c2"), PING}
    assert held <= set(await nats_server.subscriptions(worker_bus))

    await worker.stop()
    assert worker.status().active_calls == 0
    assert await nats_server.subscriptions(worker_bus) == []  # audio, work and ping alike
    assert not worker.ready()


async def test_a_replay_publishes_the_call_s_events_since_a_time_again(worker_bus: Bus, probe: Probe) -> None:
    worker, _ = await make_worker(worker_bus)
    await probe.request(subjects.STT_ASSIGN, assign())
    await speak(probe, "c1", 2)
    [started] = await probe.wait_for(SpeechStarted)
    # A new owner resumed from a snapshot older than this speech start: it asks again.
    await probe.publish(subjects.stt_replay(WORKER_ID), SttReplay(call_id="c1", since_us=started.at_us - 1))
    await probe.wait_for(SpeechStarted, count=2)
    assert probe.of(SpeechStarted) == [started, started]
    # Nothing newer than the snapshot: nothing again.
    await probe.publish(subjects.stt_replay(WORKER_ID), SttReplay(call_id="c1", since_us=started.at_us))
    await probe.publish(subjects.stt_replay(WORKER_ID), SttReplay(call_id="c9", since_us=0))  # not ours
    # One subscription handles them in order: once this one's event is back, the two above
    # were handled, and added nothing.
    await probe.publish(subjects.stt_replay(WORKER_ID), SttReplay(call_id="c1", since_us=0))
    await probe.wait_for(SpeechStarted, count=3)
    await probe.caught_up(worker_bus)
    assert len(probe.of(SpeechStarted)) == 3
    await worker.stop()


class RecordingProvider(CountingProvider):
    """Records the Twilio chunk number of every frame its sessions are fed, in order."""

    def __init__(self, settings: SttSettings) -> None:
        super().__init__(settings)
        self.fed: list[int] = []
        self._fed_more = asyncio.Event()

    async def open(self, assign: SttAssign, emit: Emit) -> Any:
        session = await super().open(assign, emit)
        feed = session.feed

        async def record(frame: AudioFrame) -> None:
            self.fed.append(frame.seq)
            self._fed_more.set()
            await feed(frame)

        session.feed = record  # type: ignore[method-assign]
        return session

    async def wait_fed(self, count: int) -> None:
        while len(self.fed) < count:
            self._fed_more.clear()
            await asyncio.wait_for(self._fed_more.wait(), timeout=5)


def chunk_at(n: int) -> AudioFrame:
    """Caller chunk `n` as the gateway stamps it: 20 ms apart, after a final at 1000 µs."""
    return AudioFrame(SPEECH, seq=n, timestamp_us=1000 + 20_000 * (n - 9))


async def test_a_worker_taking_a_call_over_first_transcribes_the_audio_its_predecessor_never_did(
    worker_bus: Bus, probe: Probe
) -> None:
    settings = SttSettings(instance_id=WORKER_ID, fake_stt_latency_ms=0)
    provider = RecordingProvider(settings)
    worker = SttWorker(worker_bus, settings, provider)
    await worker.start()
    await settle(worker_bus)
    # The gateway's side: it holds chunks 10..14 of the caller's sentence, which arrived
    # after the last final transcript, and answers the new worker's request for them.
    history = [chunk_at(n) for n in range(10, 15)]
    asked: list[int] = []

    async def gateway(msg: Msg) -> None:
        request = decode(msg.data)
        assert isinstance(request, CallerAudioRequest)
        asked.append(request.since_us)
        # Live audio goes on while the history travels: chunk 14 (again, on the live
        # subject) and 15, which must wait for the history and come once each.
        for frame in (chunk_at(14), chunk_at(15)):
            await probe.publish_frame(subjects.audio_in("c1"), frame)
        await settle(probe.bus)
        await msg.respond(encode(CallerAudio(call_id="c1", frames=[f.encode() for f in history])))

    await probe.bus.nc.subscribe(subjects.caller_audio("c1"), cb=gateway)
    await settle(probe.bus)
    reply = await probe.request(subjects.STT_ASSIGN, msgspec.structs.replace(assign(), audio_since_us=1000))
    assert reply == assigned()
    await provider.wait_fed(6)
    await probe.publish_frame(subjects.audio_in("c1"), chunk_at(16))  # caught up: live from now on
    await provider.wait_fed(7)
    assert asked == [1000]
    assert provider.fed == [10, 11, 12, 13, 14, 15, 16]
    await probe.wait_for(SpeechStarted)  # the sentence was heard from the gateway's copy
    await worker.stop()


async def test_a_worker_at_capacity_leaves_the_assign_queue_and_comes_back_with_room(
    worker_bus: Bus, probe: Probe, nats_server: NatsServer
) -> None:
    settings = SttSettings(instance_id=WORKER_ID, fake_stt_latency_ms=0, stt_max_calls=1)
    worker = SttWorker(worker_bus, settings, CountingProvider(settings))
    await worker.start()
    await settle(worker_bus)
    assert await probe.request(subjects.STT_ASSIGN, assign("c1")) == assigned("c1")

    async def in_queue() -> bool:
        return subjects.STT_ASSIGN in await nats_server.subscriptions(worker_bus)

    async def until(check: Callable[[], Awaitable[bool]], want: bool) -> None:
        for _ in range(200):  # the seat changes in a task of its own, after the reply
            if await check() == want:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the assign subscription never became {want}")

    await until(in_queue, False)  # full: NATS gives new calls to other workers
    try:
        await probe.request(subjects.STT_ASSIGN, assign("c2"), timeout=0.5)
        raise AssertionError("a full worker took a call")
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        pass
    await probe.publish(subjects.CALL_ENDED, CallEnded(call_id="c1", reason="hangup"))
    await until(in_queue, True)
    assert await probe.request(subjects.STT_ASSIGN, assign("c2")) == assigned("c2")
    await worker.stop()
