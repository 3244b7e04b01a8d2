"""The fake brain stream and the brain worker's turn handling (sentences, cancel, call
end, provider failure, stalls), the worker in-process on a real bus and a real nats-server."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from proto import subjects
from proto.headers import CALL_ID, TURN_ID
from proto.messages import (
    BrainTurn,
    CallEnded,
    ReplyDone,
    ReplyError,
    ReplyProgress,
    ReplySentence,
    TurnCancel,
)
from services.brain.providers import BrainEvent, FallbackBrainProvider, FirstToken, Sentence, make_provider
from services.brain.providers.fake import AGENT_LINE, REPROMPT, fake_reply
from services.brain.sentences import SentenceSplitter
from services.brain.worker import BrainWorker
from services.common import TurnsInFlight
from services.providers import ProviderError, RetryPolicy
from tests.unit.bus_probe import NatsServer, Probe, settle
from voxline.bus import Bus
from voxline.config import BrainSettings
from voxline.telemetry import now_us


def turn(turn_id: int = 1, user_text: str = "what time do you open", call_id: str = "c1") -> BrainTurn:
    return BrainTurn(
        call_id=call_id, turn_id=turn_id, agent_id="demo", history=[], user_text=user_text, requested_at_us=0
    )


# --- the fake provider -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_fake_stream_is_the_first_token_then_the_scripted_sentences() -> None:
    provider = make_provider("fake", BrainSettings(fake_ttft_ms=0, fake_tokens_per_s=0))
    events = [e async for e in provider.stream(turn(user_text="What are your opening hours?"))]
    first, *rest = events
    assert isinstance(first, FirstToken) and first.at_us > 0
    assert rest == [Sentence("You said: What are your opening hours."), Sentence(AGENT_LINE)]


class Scripted:
    """A provider that plays a fixed list of events, then fails with `error` if given."""

    def __init__(self, name: str, events: list[BrainEvent], error: ProviderError | None = None) -> None:
        self.name, self.events, self.error = name, events, error

    async def stream(self, turn: BrainTurn) -> AsyncIterator[BrainEvent]:
        for event in self.events:
            yield event
        if self.error is not None:
            raise self.error

    async def load(self) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.mark.asyncio
async def test_the_chain_falls_back_after_a_first_token_but_not_after_a_sentence() -> None:
    """A first token is not speech: the next provider may still answer in full. After a
    sentence went out, starting over would say it twice."""
    policy = RetryPolicy(attempts=1, backoff_s=0)
    crash = ProviderError("a", "server", "stream cut", 500)
    spare = Scripted("b", [FirstToken(2), Sentence("From b.")])
    chain = FallbackBrainProvider("brain", [Scripted("a", [FirstToken(1)], crash), spare], policy)
    assert [e async for e in chain.stream(turn())] == [FirstToken(1), FirstToken(2), Sentence("From b.")]
    chain = FallbackBrainProvider("brain", [Scripted("a", [Sentence("From a.")], crash), spare], policy)
    said: list[BrainEvent] = []
    with pytest.raises(ProviderError):
        async for event in chain.stream(turn()):
            said.append(event)
    assert said == [Sentence("From a.")]


def test_fake_reply_without_words_prompts_again() -> None:
    assert fake_reply("") == REPROMPT
    assert fake_reply("  ...  ") == REPROMPT


# --- the worker ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_stop_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turns still running when a test stops its worker are cut at once."""
    monkeypatch.setattr("services.common.STOP_GRACE_S", 0.0)


class GatedProvider:
    """Streams what the test pushes, so the test decides when each token exists (cut into
    sentences as real providers do); tells the test when each turn's stream starts and
    when it is closed."""

    name = "gated"

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | Exception | None] = asyncio.Queue()
        self.started: defaultdict[tuple[str, int], asyncio.Event] = defaultdict(asyncio.Event)
        self.closed: defaultdict[tuple[str, int], asyncio.Event] = defaultdict(asyncio.Event)

    async def stream(self, turn: BrainTurn) -> AsyncIterator[BrainEvent]:
        key = (turn.call_id, turn.turn_id)
        self.started[key].set()
        splitter = SentenceSplitter()
        try:
            while (item := await self.queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield FirstToken(now_us())
                for sentence in splitter.feed(item):
                    yield Sentence(sentence)
            for sentence in splitter.flush():
                yield Sentence(sentence)
        finally:
            self.closed[key].set()

    async def wait_started(self, call_id: str = "c1", turn_id: int = 1) -> None:
        await asyncio.wait_for(self.started[(call_id, turn_id)].wait(), timeout=5)

    async def wait_closed(self, call_id: str = "c1", turn_id: int = 1) -> None:
        await asyncio.wait_for(self.closed[(call_id, turn_id)].wait(), timeout=5)

    async def close(self) -> None:
        pass


async def make_worker(bus: Bus, provider: Any = None, **settings: Any) -> BrainWorker:
    config = BrainSettings(fake_ttft_ms=0, fake_tokens_per_s=0, **settings)
    worker = BrainWorker(bus, config, provider or make_provider("fake", config))
    await worker.start()
    await settle(bus)
    return worker


def cancel(turn_id: int, call_id: str = "c1") -> TurnCancel:
    return TurnCancel(call_id=call_id, turn_id=turn_id, reason="barge_in", at_us=0)


async def test_reply_is_published_sentence_by_sentence_then_done(worker_bus: Bus, probe: Probe) -> None:
    worker = await make_worker(worker_bus)
    await probe.publish(subjects.BRAIN_TURN, turn(user_text="Book a table."))
    [done] = await probe.wait_for(ReplyDone)

    sentences = probe.of(ReplySentence)
    assert [s.text for s in sentences] == ["You said: Book a table.", AGENT_LINE]
    assert [s.seq for s in sentences] == [0, 1]
    assert done.sentences == 2 and done.turn_id == 1
    assert all(s.first_token_us == sentences[0].first_token_us > 0 for s in sentences)
    assert sentences[0].first_token_us <= sentences[0].at_us
    for seen in probe.received():
        assert seen.subject == subjects.reply_text("c1")
        assert seen.headers[CALL_ID] == "c1" and seen.headers[TURN_ID] == "1"
    assert worker.status().active == 0
    await worker.stop()


async def test_first_sentence_is_published_before_the_stream_ends(worker_bus: Bus, probe: Probe) -> None:
    provider = GatedProvider()
    worker = await make_worker(worker_bus, provider)
    await probe.publish(subjects.BRAIN_TURN, turn())
    for token in ["We open ", "at nine ", "tomorrow. ", "See"]:
        provider.queue.put_nowait(token)
    [first] = await probe.wait_for(ReplySentence)
    assert first.text == "We open at nine tomorrow." and not probe.of(ReplyDone)
    provider.queue.put_nowait(" you then.")
    provider.queue.put_nowait(None)
    await probe.wait_for(ReplyDone)
    assert [s.text for s in probe.of(ReplySentence)] == ["We open at nine tomorrow.", "See you then."]
    await worker.stop()


async def test_cancel_stops_the_provider_stream_and_publishes_nothing_more(worker_bus: Bus, probe: Probe) -> None:
    provider = GatedProvider()
    worker = await make_worker(worker_bus, provider)
    await probe.publish(subjects.BRAIN_TURN, turn(turn_id=3))
    provider.queue.put_nowait("We open at nine tomorrow. ")
    provider.queue.put_nowait("And ")
    await probe.wait_for(ReplySentence)

    await probe.publish(subjects.turn_cancel("c1"), cancel(3))
    await provider.wait_closed("c1", 3)
    provider.queue.put_nowait("more words. ")
    assert worker.status().active == 0
    # The next turn's reply is published after anything more of turn 3 would have been,
    # and NATS delivers one publisher's messages in order; it also gets the words turn 3
    # no longer reads.
    await probe.publish(subjects.BRAIN_TURN, turn(turn_id=4))
    provider.queue.put_nowait(None)
    await probe.wait_for(ReplyDone)
    assert [(s.turn_id, s.text) for s in probe.of(ReplySentence)] == [
        (3, "We open at nine tomorrow."),
        (4, "more words."),
    ]
    assert [d.turn_id for d in probe.of(ReplyDone)] == [4] and not probe.of(ReplyError)
    await worker.stop()


async def test_cancel_keeps_newer_turns_and_refuses_late_older_ones(worker_bus: Bus, probe: Probe) -> None:
    provider = GatedProvider()
    worker = await make_worker(worker_bus, provider)
    await probe.publish(subjects.BRAIN_TURN, turn(turn_id=2))
    await probe.publish(subjects.BRAIN_TURN, turn(turn_id=1, call_id="bystander"))
    await provider.wait_started("c1", 2)
    await provider.wait_started("bystander", 1)
    await probe.publish(subjects.turn_cancel("c1"), cancel(1))
    # Cancels share one subscription: once the bystander's is handled, so is the one before.
    await probe.publish(subjects.turn_cancel("bystander"), cancel(1, call_id="bystander"))
    await provider.wait_closed("bystander", 1)
    assert worker.status().turns == [TurnsInFlight("c1", [2])]
    assert not provider.closed[("c1", 2)].is_set()

    await probe.publish(subjects.turn_cancel("c1"), cancel(2))
    await provider.wait_closed("c1", 2)
    await probe.publish(subjects.BRAIN_TURN, turn(turn_id=2))  # arrived after its cancel
    await probe.publish(subjects.BRAIN_TURN, turn(turn_id=1, call_id="c3"))  # handled after it
    await provider.wait_started("c3", 1)
    assert worker.status().turns == [TurnsInFlight("c3", [1])]
    await worker.stop()


async def test_call_end_cancels_every_turn_of_that_call_only(worker_bus: Bus, probe: Probe) -> None:
    provider = GatedProvider()
    worker = await make_worker(worker_bus, provider)
    await probe.publish(subjects.BRAIN_TURN, turn(turn_id=1, call_id="c1"))
    await probe.publish(subjects.BRAIN_TURN, turn(turn_id=1, call_id="c2"))
    await provider.wait_started("c1", 1)
    await provider.wait_started("c2", 1)
    await probe.publish(subjects.CALL_ENDED, CallEnded(call_id="c1", reason="hangup"))
    await provider.wait_closed("c1", 1)
    assert worker.status().turns == [TurnsInFlight("c2", [1])]

    await probe.publish(subjects.BRAIN_TURN, turn(turn_id=2, call_id="c1"))  # the ended call's: refused
    await probe.publish(subjects.BRAIN_TURN, turn(turn_id=1, call_id="c3"))  # handled after it
    await provider.wait_started("c3", 1)
    assert worker.status().turns == [TurnsInFlight("c2", [1]), TurnsInFlight("c3", [1])]
    await worker.stop()


async def test_a_worker_holding_a_turn_says_so_until_it_answers_echoing_the_attempt(
    worker_bus: Bus, probe: Probe
) -> None:
    """The orchestrator tells a dead worker from a slow model by this heartbeat: it must
    come as the turn is taken, go on while the model is silent, and carry the request's
    attempt, or a retried turn would be judged by the dead worker's messages."""
    provider = GatedProvider()
    worker = await make_worker(worker_bus, provider, brain_heartbeat_s=0.05, instance_id="brain-7")
    await probe.publish(subjects.BRAIN_TURN, msgspec.structs.replace(turn(), attempt=1))
    await provider.wait_started()
    beats = await probe.wait_for(ReplyProgress, count=3)  # the model has said nothing yet
    assert not probe.of(ReplySentence)
    assert {(b.turn_id, b.attempt, b.worker_id) for b in beats} == {(1, 1, "brain-7")}
    assert [b.at_us for b in beats] == sorted(b.at_us for b in beats)
    provider.queue.put_nowait("We open at nine. ")
    provider.queue.put_nowait(None)
    [done] = await probe.wait_for(ReplyDone)
    assert done.attempt == 1 and [s.attempt for s in probe.of(ReplySentence)] == [1]
    await worker.stop()


async def test_provider_failure_becomes_a_reply_error(worker_bus: Bus, probe: Probe) -> None:
    provider = GatedProvider()
    worker = await make_worker(worker_bus, provider)
    await probe.publish(subjects.BRAIN_TURN, turn())
    provider.queue.put_nowait(RuntimeError("rate limited"))
    [error] = await probe.wait_for(ReplyError)
    assert error.turn_id == 1 and "gated" in error.message and "rate limited" in error.message
    assert not probe.of(ReplyDone)
    await worker.stop()


async def test_a_silent_provider_times_out_with_a_reply_error(worker_bus: Bus, probe: Probe) -> None:
    provider = GatedProvider()
    worker = await make_worker(worker_bus, provider, brain_stall_timeout_s=0.05)
    await probe.publish(subjects.BRAIN_TURN, turn())
    [error] = await probe.wait_for(ReplyError)
    assert "no output" in error.message
    await provider.wait_closed()
    await worker.stop()


async def test_stop_fails_unfinished_turns_with_a_reply_error(worker_bus: Bus, probe: Probe) -> None:
    provider = GatedProvider()
    worker = await make_worker(worker_bus, provider)
    await probe.publish(subjects.BRAIN_TURN, turn())
    await provider.wait_started()
    await worker.stop()
    [error] = await probe.wait_for(ReplyError)
    assert "stopped" in error.message
    assert not worker.ready()


async def test_requests_and_cancels_of_a_replaced_owner_are_dropped(worker_bus: Bus, probe: Probe) -> None:
    worker = await make_worker(worker_bus)
    fresh = msgspec.structs.replace(turn(turn_id=101, user_text="Are you open?"), epoch=2)
    await probe.publish(subjects.BRAIN_TURN, fresh)
    [done] = await probe.wait_for(ReplyDone)
    assert done.turn_id == 101
    # The old owner (epoch 1) wakes up after the takeover: its request and its cancel are
    # not the call's any more. The next request of the new owner is answered after them.
    await probe.publish(subjects.BRAIN_TURN, msgspec.structs.replace(turn(turn_id=5), epoch=1))
    await probe.publish(subjects.turn_cancel("c1"), msgspec.structs.replace(cancel(102), epoch=1))
    await probe.publish(subjects.BRAIN_TURN, msgspec.structs.replace(turn(turn_id=102, user_text="Thanks."), epoch=2))
    await probe.wait_for(ReplyDone, count=2)
    assert [d.turn_id for d in probe.of(ReplyDone)] == [101, 102]
    assert 5 not in {s.turn_id for s in probe.of(ReplySentence)}
    await worker.stop()


async def test_a_worker_at_capacity_leaves_the_queue_and_the_next_turn_goes_to_one_with_room(
    worker_bus: Bus, probe: Probe, nats_server: NatsServer
) -> None:
    """Admission control: with room for one reply, a worker streaming one is out of the
    brain queue group, so NATS hands the next turn to a worker with room; once its reply
    is done it is back (failed before: the full worker stayed in the queue)."""
    busy_provider, spare_provider = GatedProvider(), GatedProvider()
    busy = await make_worker(worker_bus, busy_provider, brain_max_turns=1)

    async def in_queue() -> bool:
        return subjects.BRAIN_TURN in await nats_server.subscriptions(worker_bus)

    async def until(want: bool) -> None:
        for _ in range(200):  # the seat changes in a task of its own, after the turn was taken
            if await in_queue() == want:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the brain subscription never became {want}")

    await probe.publish(subjects.BRAIN_TURN, turn(call_id="c1"))
    await busy_provider.wait_started("c1")
    await until(False)
    assert not busy.status().in_queue and busy.status().capacity == 1
    spare_bus = Bus("spare-brain")
    await spare_bus.connect(nats_server.url)
    spare = await make_worker(spare_bus, spare_provider, brain_max_turns=1)
    try:
        await probe.publish(subjects.BRAIN_TURN, turn(call_id="c2"))
        await spare_provider.wait_started("c2")
        assert ("c2", 1) not in busy_provider.started
        busy_provider.queue.put_nowait(None)  # the first reply ends: room again
        await probe.wait_for(ReplyDone)
        await until(True)
        assert busy.status().in_queue
    finally:
        spare_provider.queue.put_nowait(None)
        await spare.stop()
        await spare_bus.close()
        await busy.stop()
