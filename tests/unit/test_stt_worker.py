"""The STT worker's call handling (assign, duplicate assign, call end, provider failure)
against a recording stand-in for the bus; the real bus is covered by integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from proto import subjects
from proto.audio_frame import AudioFrame
from proto.headers import CALL_ID
from proto.messages import CallEnded, Message, SpeechStarted, SttAssign, SttAssigned, SttError
from services.stt.providers.base import Emit
from services.stt.providers.fake import FakeSttProvider
from services.stt.worker import SttWorker
from voxline.audio import FRAME_SAMPLES, pcm16_to_mulaw, tone_pcm16
from voxline.config import SttSettings

SPEECH = pcm16_to_mulaw(tone_pcm16(20))[:FRAME_SAMPLES]


class StubSub:
    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.unsubscribed = asyncio.Event()

    async def unsubscribe(self) -> None:
        self.unsubscribed.set()


class StubMsg:
    def __init__(self, subject: str, reply: str = "_INBOX.1") -> None:
        self.subject = subject
        self.reply = reply
        self.headers: dict[str, str] | None = None


class StubBus:
    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[Message, Any], Awaitable[None]]] = {}
        self.frame_handlers: dict[str, Callable[[AudioFrame, Any], Awaitable[None]]] = {}
        self.subs: dict[str, StubSub] = {}
        self.published: list[tuple[str, Message, dict[str, str]]] = []
        self.replies: list[Message] = []
        self.error = asyncio.Event()

    async def subscribe(self, subject: str, handler: Any, queue: str = "") -> StubSub:
        self.handlers[subject] = handler
        return StubSub(subject)

    async def subscribe_frames(self, subject: str, handler: Any) -> StubSub:
        self.frame_handlers[subject] = handler
        self.subs[subject] = StubSub(subject)
        return self.subs[subject]

    async def publish(self, subject: str, message: Message, headers: dict[str, str] | None = None) -> None:
        self.published.append((subject, message, headers or {}))
        if isinstance(message, SttError):
            self.error.set()

    async def respond(self, msg: Any, message: Message) -> None:
        self.replies.append(message)

    async def deliver(self, subject: str, message: Message) -> None:
        await self.handlers[subject](message, StubMsg(subject))


class CountingProvider(FakeSttProvider):
    def __init__(self, settings: SttSettings, fail_open: bool = False, fail_feed: bool = False) -> None:
        super().__init__(settings)
        self.opened = 0
        self.fail_open = fail_open
        self.fail_feed = fail_feed

    async def open(self, assign: SttAssign, emit: Emit) -> Any:
        if self.fail_open:
            raise RuntimeError("no capacity")
        self.opened += 1
        session = await super().open(assign, emit)
        if self.fail_feed:

            async def broken(frame: AudioFrame) -> None:
                raise RuntimeError("socket closed")

            session.feed = broken  # type: ignore[method-assign]
        return session


async def make_worker(**flags: bool) -> tuple[SttWorker, StubBus, CountingProvider]:
    bus = StubBus()
    settings = SttSettings(instance_id="stt-test", fake_stt_latency_ms=0)
    provider = CountingProvider(settings, **flags)
    worker = SttWorker(bus, settings, provider)  # type: ignore[arg-type]
    await worker.start()
    return worker, bus, provider


ASSIGN = SttAssign(call_id="c1", agent_id="demo")


@pytest.mark.asyncio
async def test_assign_takes_the_call_once_and_answers_every_time() -> None:
    worker, bus, provider = await make_worker()
    await bus.deliver(subjects.STT_ASSIGN, ASSIGN)
    await bus.deliver(subjects.STT_ASSIGN, ASSIGN)

    assert provider.opened == 1
    assert bus.replies == [SttAssigned(call_id="c1", worker_id="stt-test", provider="fake")] * 2
    assert worker.status()["active_calls"] == 1 and worker.status()["calls"] == ["c1"]
    assert subjects.audio_in("c1") in bus.frame_handlers
    await worker.stop()


@pytest.mark.asyncio
async def test_events_go_to_the_call_subject_with_call_headers() -> None:
    worker, bus, _ = await make_worker()
    await bus.deliver(subjects.STT_ASSIGN, ASSIGN)
    on_frame = bus.frame_handlers[subjects.audio_in("c1")]
    for _ in range(2):
        await on_frame(AudioFrame(SPEECH), StubMsg(subjects.audio_in("c1")))

    subject, event, headers = bus.published[0]
    assert subject == subjects.stt_events("c1")
    assert isinstance(event, SpeechStarted)
    assert headers[CALL_ID] == "c1"
    await worker.stop()


@pytest.mark.asyncio
async def test_call_ended_releases_session_and_audio() -> None:
    worker, bus, _ = await make_worker()
    await bus.deliver(subjects.STT_ASSIGN, ASSIGN)
    await bus.deliver(subjects.CALL_ENDED, CallEnded(call_id="c1", reason="hangup"))

    assert bus.subs[subjects.audio_in("c1")].unsubscribed.is_set()
    assert worker.status() == {"provider": "fake", "active_calls": 0, "calls": []}
    # A late assign for the ended call is not taken (it would never be released).
    await bus.deliver(subjects.STT_ASSIGN, ASSIGN)
    assert worker.status()["active_calls"] == 0
    await worker.stop()


@pytest.mark.asyncio
async def test_provider_that_cannot_open_answers_with_an_error() -> None:
    worker, bus, _ = await make_worker(fail_open=True)
    await bus.deliver(subjects.STT_ASSIGN, ASSIGN)
    assert len(bus.replies) == 1 and isinstance(bus.replies[0], SttError)
    assert "no capacity" in bus.replies[0].message
    assert worker.status()["active_calls"] == 0
    await worker.stop()


@pytest.mark.asyncio
async def test_failing_session_reports_once_and_releases_the_call() -> None:
    worker, bus, _ = await make_worker(fail_feed=True)
    await bus.deliver(subjects.STT_ASSIGN, ASSIGN)
    on_frame = bus.frame_handlers[subjects.audio_in("c1")]
    for _ in range(5):
        await on_frame(AudioFrame(SPEECH), StubMsg(subjects.audio_in("c1")))
    await asyncio.wait_for(bus.subs[subjects.audio_in("c1")].unsubscribed.wait(), timeout=5)

    errors = [m for _, m, _ in bus.published if isinstance(m, SttError)]
    assert len(errors) == 1 and "socket closed" in errors[0].message
    assert worker.status()["active_calls"] == 0
    await worker.stop()


@pytest.mark.asyncio
async def test_stop_releases_every_call() -> None:
    worker, bus, _ = await make_worker()
    await bus.deliver(subjects.STT_ASSIGN, ASSIGN)
    await bus.deliver(subjects.STT_ASSIGN, SttAssign(call_id="c2", agent_id="demo"))
    await worker.stop()
    assert worker.status()["active_calls"] == 0
    assert all(sub.unsubscribed.is_set() for sub in bus.subs.values())
    assert not worker.ready()
