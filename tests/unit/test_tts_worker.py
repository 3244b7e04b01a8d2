"""The TTS worker's sentence handling (frames, closing frame on every outcome, cancel,
call end, stop) against a recording stand-in for the bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from proto import subjects
from proto.audio_frame import AudioFrame, FrameFlags
from proto.headers import CALL_ID, TURN_ID
from proto.messages import CallEnded, Message, SentenceSynthesized, Synthesize, TtsError, TurnCancel
from services.tts.providers import make_provider
from services.tts.providers.fake import fake_speech
from services.tts.worker import TtsWorker
from voxline.config import TtsSettings

EOS = FrameFlags.END_OF_SENTENCE
EOT = FrameFlags.END_OF_TURN


@pytest.fixture(autouse=True)
def no_stop_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sentences still running when a test stops its worker are cut at once."""
    monkeypatch.setattr("services.tts.worker.STOP_GRACE_S", 0.0)


class StubMsg:
    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.reply = ""
        self.headers: dict[str, str] | None = None


class StubSub:
    async def unsubscribe(self) -> None:
        pass


class StubBus:
    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[Message, Any], Awaitable[None]]] = {}
        self.frames: list[tuple[str, AudioFrame, dict[str, str]]] = []
        self.events: list[Message] = []
        self.changed = asyncio.Condition()

    async def subscribe(self, subject: str, handler: Any, queue: str = "") -> StubSub:
        self.handlers[subject] = handler
        return StubSub()

    async def publish_frame(self, subject: str, frame: AudioFrame, headers: dict[str, str] | None = None) -> None:
        async with self.changed:
            self.frames.append((subject, frame, headers or {}))
            self.changed.notify_all()

    async def publish(self, subject: str, message: Message, headers: dict[str, str] | None = None) -> None:
        assert subject == subjects.tts_events(message.call_id)
        async with self.changed:
            self.events.append(message)
            self.changed.notify_all()

    async def deliver(self, subject: str, message: Message) -> None:
        await self.handlers[subject](message, StubMsg(subject))

    async def until(self, condition: Callable[[], bool]) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(condition), timeout=5)

    def payloads(self) -> list[AudioFrame]:
        return [frame for _, frame, _ in self.frames]


class GatedProvider:
    """Yields what the test pushes: bytes, an exception to raise, or None to finish."""

    name = "gated"

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | Exception | None] = asyncio.Queue()
        self.closed = asyncio.Event()

    async def synthesize(self, text: str, voice: str) -> AsyncIterator[bytes]:
        try:
            while (item := await self.queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.closed.set()

    async def close(self) -> None:
        pass


async def make_worker(provider: Any = None, **settings: Any) -> tuple[TtsWorker, StubBus]:
    bus = StubBus()
    config = TtsSettings(fake_ttfb_ms=0, tts_chunk_ms=100, **settings)
    worker = TtsWorker(bus, config, provider or make_provider("fake", config))  # type: ignore[arg-type]
    await worker.start()
    return worker, bus


def say(text: str, turn_id: int = 1, seq: int = 0, call_id: str = "c1", **flags: bool) -> Synthesize:
    return Synthesize(call_id=call_id, turn_id=turn_id, seq=seq, text=text, requested_at_us=0, **flags)


@pytest.mark.asyncio
async def test_sentence_becomes_ordered_chunks_closed_by_end_of_sentence() -> None:
    worker, bus = await make_worker()
    text = "We are open from nine to five."
    await bus.deliver(subjects.TTS_SYNTHESIZE, say(text, turn_id=4, seq=2))
    await bus.until(lambda: bool(bus.events))

    frames = bus.payloads()
    assert b"".join(f.payload for f in frames) == fake_speech(text, worker.settings.fake_ms_per_char)
    assert [f.chunk for f in frames] == list(range(len(frames)))
    assert all(f.turn_id == 4 and f.seq == 2 for f in frames)
    assert all(len(f.payload) == 800 for f in frames[:-1])
    assert [f.flags for f in frames] == [FrameFlags.NONE] * (len(frames) - 1) + [EOS]
    for subject, _, headers in bus.frames:
        assert subject == subjects.audio_out("c1")
        assert headers[CALL_ID] == "c1" and headers[TURN_ID] == "4"
    [done] = bus.events
    assert isinstance(done, SentenceSynthesized) and (done.turn_id, done.seq) == (4, 2)
    assert done.audio_ms == pytest.approx(len(text) * worker.settings.fake_ms_per_char, abs=1)
    assert done.first_audio_us == frames[0].timestamp_us
    await worker.stop()


@pytest.mark.asyncio
async def test_empty_last_sentence_is_one_empty_closing_frame() -> None:
    worker, bus = await make_worker()
    await bus.deliver(subjects.TTS_SYNTHESIZE, say("", seq=3, last=True, greeting=True))
    await bus.until(lambda: bool(bus.events))
    [frame] = bus.payloads()
    assert frame.payload == b"" and frame.seq == 3 and frame.chunk == 0
    assert frame.flags == EOS | EOT | FrameFlags.GREETING
    assert isinstance(bus.events[0], SentenceSynthesized) and bus.events[0].audio_ms == 0
    await worker.stop()


@pytest.mark.asyncio
async def test_greeting_flag_is_on_every_chunk_and_end_of_turn_on_the_last() -> None:
    worker, bus = await make_worker()
    await bus.deliver(subjects.TTS_SYNTHESIZE, say("Hello, thanks for calling.", last=True, greeting=True))
    await bus.until(lambda: bool(bus.events))
    frames = bus.payloads()
    assert len(frames) > 1
    assert all(f.flags & FrameFlags.GREETING for f in frames)
    assert [bool(f.flags & EOT) for f in frames] == [False] * (len(frames) - 1) + [True]
    await worker.stop()


@pytest.mark.asyncio
async def test_first_chunk_goes_out_before_synthesis_ends() -> None:
    provider = GatedProvider()
    worker, bus = await make_worker(provider)
    await bus.deliver(subjects.TTS_SYNTHESIZE, say("A long sentence."))
    provider.queue.put_nowait(b"\x7f" * 1000)
    await bus.until(lambda: len(bus.frames) == 1)
    assert bus.payloads()[0].payload == b"\x7f" * 800 and not bus.events
    provider.queue.put_nowait(None)
    await bus.until(lambda: bool(bus.events))
    assert [len(f.payload) for f in bus.payloads()] == [800, 200]
    await worker.stop()


@pytest.mark.asyncio
async def test_provider_failure_still_closes_the_sentence_then_reports() -> None:
    provider = GatedProvider()
    worker, bus = await make_worker(provider)
    await bus.deliver(subjects.TTS_SYNTHESIZE, say("Doomed sentence.", last=True))
    provider.queue.put_nowait(b"\x7f" * 900)
    provider.queue.put_nowait(RuntimeError("voice not found"))
    await bus.until(lambda: bool(bus.events))

    frames = bus.payloads()
    assert [len(f.payload) for f in frames] == [800, 100]
    assert frames[-1].flags == EOS | EOT
    [error] = bus.events
    assert isinstance(error, TtsError) and "gated" in error.message and "voice not found" in error.message
    await worker.stop()


@pytest.mark.asyncio
async def test_a_silent_provider_times_out_and_the_sentence_is_closed() -> None:
    provider = GatedProvider()
    worker, bus = await make_worker(provider, tts_stall_timeout_s=0.05)
    await bus.deliver(subjects.TTS_SYNTHESIZE, say("Never spoken."))
    await bus.until(lambda: bool(bus.events))
    [frame] = bus.payloads()
    assert frame.payload == b"" and frame.flags == EOS
    assert isinstance(bus.events[0], TtsError) and "no audio" in bus.events[0].message
    await asyncio.wait_for(provider.closed.wait(), timeout=5)
    await worker.stop()


@pytest.mark.asyncio
async def test_cancel_stops_synthesis_without_a_closing_frame() -> None:
    provider = GatedProvider()
    worker, bus = await make_worker(provider)
    await bus.deliver(subjects.TTS_SYNTHESIZE, say("Interrupted.", turn_id=2))
    provider.queue.put_nowait(b"\x7f" * 1000)
    await bus.until(lambda: len(bus.frames) == 1)

    await bus.deliver(subjects.ALL_TURN_CANCELS, TurnCancel(call_id="c1", turn_id=2, reason="barge_in", at_us=0))
    await asyncio.wait_for(provider.closed.wait(), timeout=5)
    assert len(bus.frames) == 1 and not bus.events
    # A sentence of the cancelled turn that arrives late is not spoken at all.
    await bus.deliver(subjects.TTS_SYNTHESIZE, say("Late sentence.", turn_id=2, seq=1))
    assert worker.status()["active_sentences"] == 0
    await worker.stop()
    assert len(bus.frames) == 1 and not bus.events


@pytest.mark.asyncio
async def test_call_end_stops_only_that_call() -> None:
    provider = GatedProvider()
    worker, bus = await make_worker(provider)
    await bus.deliver(subjects.TTS_SYNTHESIZE, say("First call.", call_id="c1"))
    await bus.deliver(subjects.TTS_SYNTHESIZE, say("Second call.", call_id="c2"))
    await bus.deliver(subjects.CALL_ENDED, CallEnded(call_id="c1", reason="hangup"))
    assert worker.status()["turns"] == [{"call_id": "c2", "turn_ids": [1]}]
    await worker.stop()


@pytest.mark.asyncio
async def test_stop_closes_unfinished_sentences_with_an_error() -> None:
    provider = GatedProvider()
    worker, bus = await make_worker(provider)
    await bus.deliver(subjects.TTS_SYNTHESIZE, say("Cut short.", last=True))
    provider.queue.put_nowait(b"\x7f" * 300)
    await worker.stop()
    [frame] = bus.payloads()
    assert frame.flags == EOS | EOT
    assert isinstance(bus.events[0], TtsError) and "stopped" in bus.events[0].message
    assert not worker.ready()
