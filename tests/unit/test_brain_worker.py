"""The fake brain stream and the brain worker's turn handling (sentences, cancel, call
end, provider failure, stalls) against a recording stand-in for the bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from proto import subjects
from proto.headers import CALL_ID, TURN_ID
from proto.messages import (
    BrainTurn,
    CallEnded,
    Message,
    ReplyDone,
    ReplyError,
    ReplySentence,
    TurnCancel,
)
from services.brain.providers import make_provider
from services.brain.providers.fake import AGENT_LINE, REPROMPT, fake_reply
from services.brain.worker import BrainWorker
from voxline.config import BrainSettings


def turn(turn_id: int = 1, user_text: str = "what time do you open", call_id: str = "c1") -> BrainTurn:
    return BrainTurn(
        call_id=call_id, turn_id=turn_id, agent_id="demo", history=[], user_text=user_text, requested_at_us=0
    )


# --- the fake provider -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_fake_stream_is_the_scripted_reply_word_by_word() -> None:
    provider = make_provider("fake", BrainSettings(fake_ttft_ms=0, fake_tokens_per_s=0))
    tokens = [t async for t in provider.stream(turn(user_text="What are your opening hours?"))]
    assert "".join(tokens) == f"You said: What are your opening hours. {AGENT_LINE}"
    assert len(tokens) == len("".join(tokens).split(" "))
    assert tokens == [t async for t in provider.stream(turn(user_text="What are your opening hours?"))]


def test_fake_reply_without_words_prompts_again() -> None:
    assert fake_reply("") == REPROMPT
    assert fake_reply("  ...  ") == REPROMPT


# --- the worker ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_stop_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turns still running when a test stops its worker are cut at once."""
    monkeypatch.setattr("services.brain.worker.STOP_GRACE_S", 0.0)


class StubMsg:
    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.reply = ""
        self.headers: dict[str, str] | None = None


class StubBus:
    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[Message, Any], Awaitable[None]]] = {}
        self.published: list[tuple[str, Message, dict[str, str]]] = []
        self.arrived = asyncio.Condition()

    async def subscribe(self, subject: str, handler: Any, queue: str = "") -> Any:
        self.handlers[subject] = handler
        return StubSub()

    async def publish(self, subject: str, message: Message, headers: dict[str, str] | None = None) -> None:
        async with self.arrived:
            self.published.append((subject, message, headers or {}))
            self.arrived.notify_all()

    async def deliver(self, subject: str, message: Message) -> None:
        await self.handlers[subject](message, StubMsg(subject))

    async def wait_for(self, kind: type, count: int = 1) -> list[Any]:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.of(kind)) >= count), timeout=5)
        return self.of(kind)

    def of(self, kind: type) -> list[Any]:
        return [m for _, m, _ in self.published if isinstance(m, kind)]


class StubSub:
    async def unsubscribe(self) -> None:
        pass


class GatedProvider:
    """Yields what the test pushes, so the test decides when each token exists."""

    name = "gated"

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | Exception | None] = asyncio.Queue()
        self.closed = asyncio.Event()

    async def stream(self, turn: BrainTurn) -> AsyncIterator[str]:
        try:
            while (item := await self.queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.closed.set()

    async def close(self) -> None:
        pass


async def make_worker(provider: Any = None, **settings: Any) -> tuple[BrainWorker, StubBus]:
    bus = StubBus()
    config = BrainSettings(fake_ttft_ms=0, fake_tokens_per_s=0, **settings)
    worker = BrainWorker(bus, config, provider or make_provider("fake", config))  # type: ignore[arg-type]
    await worker.start()
    return worker, bus


@pytest.mark.asyncio
async def test_reply_is_published_sentence_by_sentence_then_done() -> None:
    worker, bus = await make_worker()
    await bus.deliver(subjects.BRAIN_TURN, turn(user_text="Book a table."))
    [done] = await bus.wait_for(ReplyDone)

    sentences = bus.of(ReplySentence)
    assert [s.text for s in sentences] == ["You said: Book a table.", AGENT_LINE]
    assert [s.seq for s in sentences] == [0, 1]
    assert done.sentences == 2 and done.turn_id == 1
    assert all(s.first_token_us == sentences[0].first_token_us > 0 for s in sentences)
    for subject, _, headers in bus.published:
        assert subject == subjects.reply_text("c1")
        assert headers[CALL_ID] == "c1" and headers[TURN_ID] == "1"
    assert worker.status()["active_turns"] == 0
    await worker.stop()


@pytest.mark.asyncio
async def test_first_sentence_is_published_before_the_stream_ends() -> None:
    provider = GatedProvider()
    worker, bus = await make_worker(provider)
    await bus.deliver(subjects.BRAIN_TURN, turn())
    for token in ["We open ", "at nine ", "tomorrow. ", "See"]:
        provider.queue.put_nowait(token)
    [first] = await bus.wait_for(ReplySentence)
    assert first.text == "We open at nine tomorrow." and not bus.of(ReplyDone)
    provider.queue.put_nowait(" you then.")
    provider.queue.put_nowait(None)
    await bus.wait_for(ReplyDone)
    assert [s.text for s in bus.of(ReplySentence)] == ["We open at nine tomorrow.", "See you then."]
    await worker.stop()


@pytest.mark.asyncio
async def test_cancel_stops_the_provider_stream_and_publishes_nothing_more() -> None:
    provider = GatedProvider()
    worker, bus = await make_worker(provider)
    await bus.deliver(subjects.BRAIN_TURN, turn(turn_id=3))
    provider.queue.put_nowait("We open at nine tomorrow. ")
    provider.queue.put_nowait("And ")
    await bus.wait_for(ReplySentence)

    await bus.deliver(subjects.ALL_TURN_CANCELS, TurnCancel(call_id="c1", turn_id=3, reason="barge_in", at_us=0))
    await asyncio.wait_for(provider.closed.wait(), timeout=5)
    provider.queue.put_nowait("more words. ")
    assert len(bus.published) == 1
    assert worker.status()["active_turns"] == 0
    await worker.stop()


@pytest.mark.asyncio
async def test_cancel_keeps_newer_turns_and_refuses_late_older_ones() -> None:
    provider = GatedProvider()
    worker, bus = await make_worker(provider)
    await bus.deliver(subjects.BRAIN_TURN, turn(turn_id=2))
    await bus.deliver(subjects.ALL_TURN_CANCELS, TurnCancel(call_id="c1", turn_id=1, reason="barge_in", at_us=0))
    assert worker.status()["turns"] == [{"call_id": "c1", "turn_ids": [2]}]

    await bus.deliver(subjects.ALL_TURN_CANCELS, TurnCancel(call_id="c1", turn_id=2, reason="barge_in", at_us=0))
    await bus.deliver(subjects.BRAIN_TURN, turn(turn_id=2))  # arrived after its cancel
    assert worker.status()["active_turns"] == 0
    await worker.stop()


@pytest.mark.asyncio
async def test_call_end_cancels_every_turn_of_that_call_only() -> None:
    provider = GatedProvider()
    worker, bus = await make_worker(provider)
    await bus.deliver(subjects.BRAIN_TURN, turn(turn_id=1, call_id="c1"))
    await bus.deliver(subjects.BRAIN_TURN, turn(turn_id=1, call_id="c2"))
    await bus.deliver(subjects.CALL_ENDED, CallEnded(call_id="c1", reason="hangup"))
    assert worker.status()["turns"] == [{"call_id": "c2", "turn_ids": [1]}]
    await bus.deliver(subjects.BRAIN_TURN, turn(turn_id=2, call_id="c1"))
    assert worker.status()["active_turns"] == 1
    await worker.stop()


@pytest.mark.asyncio
async def test_provider_failure_becomes_a_reply_error() -> None:
    provider = GatedProvider()
    worker, bus = await make_worker(provider)
    await bus.deliver(subjects.BRAIN_TURN, turn())
    provider.queue.put_nowait(RuntimeError("rate limited"))
    [error] = await bus.wait_for(ReplyError)
    assert error.turn_id == 1 and "gated" in error.message and "rate limited" in error.message
    assert not bus.of(ReplyDone)
    await worker.stop()


@pytest.mark.asyncio
async def test_a_silent_provider_times_out_with_a_reply_error() -> None:
    provider = GatedProvider()
    worker, bus = await make_worker(provider, brain_stall_timeout_s=0.05)
    await bus.deliver(subjects.BRAIN_TURN, turn())
    [error] = await bus.wait_for(ReplyError)
    assert "no output" in error.message
    await asyncio.wait_for(provider.closed.wait(), timeout=5)
    await worker.stop()


@pytest.mark.asyncio
async def test_stop_fails_unfinished_turns_with_a_reply_error() -> None:
    provider = GatedProvider()
    worker, bus = await make_worker(provider)
    await bus.deliver(subjects.BRAIN_TURN, turn())
    await worker.stop()
    [error] = bus.of(ReplyError)
    assert "stopped" in error.message
    assert not worker.ready()
