"""The call record's cost drivers (`CallRecord.costs`): the orchestrator's accounting from
the events it handles (its pure core, driven event by event), the brain worker summing the
provider's usage into ReplyDone (in-process on a real nats-server), and the OpenAI
provider passing on what the endpoint's usage chunk says (the emulator over a socket)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest

from proto import subjects
from proto.messages import BrainTurn, CallStopped, LlmUsage, ReplyDone, Synthesize
from proto.records import CallCosts, CallRecord
from services.brain.providers import BrainEvent, FirstToken, Sentence, Usage
from services.orchestrator.timers import TimerKind
from tests.emulators.openai_chat import OpenAiChatEmulator, Reply
from tests.unit.bus_probe import Probe
from tests.unit.orchestrator_driver import CALL_ID, GREETING, T0, Driver
from tests.unit.test_brain_openai_api import brain, reply
from tests.unit.test_brain_worker import make_worker, turn
from voxline.bus import Bus


def done_with(d: Driver, turn_id: int, sentences: int, usage: LlmUsage | None) -> None:
    d.send(ReplyDone(call_id=CALL_ID, turn_id=turn_id, sentences=sentences, at_us=d.now_us, usage=usage))


def test_a_call_counts_tts_characters_audio_tokens_and_its_length() -> None:
    d = Driver()
    greeting = d.greet()  # 1 s of audio per sentence (Driver.play)
    assert d.call.record.costs.tts_characters == len(GREETING)

    d.says("when are you open")
    while d.pending(TimerKind.END_OF_TURN):
        d.fire(TimerKind.END_OF_TURN)
    answer = d.turn
    reply_sentences = ["We open at nine.", "See you then."]
    for seq, text in enumerate(reply_sentences):
        d.sentence(answer.turn_id, seq, text)
    done_with(d, answer.turn_id, 2, LlmUsage(prompt_tokens=120, completion_tokens=9))
    d.play(answer)

    d.says("and on sundays")
    while d.pending(TimerKind.END_OF_TURN):
        d.fire(TimerKind.END_OF_TURN)
    second = d.turn
    d.sentence(second.turn_id, 0, "Closed.")
    done_with(d, second.turn_id, 1, None)  # a provider that reported nothing
    d.play(second)
    d.wait(500)
    d.send(CallStopped(call_id=CALL_ID, reason="caller hung up", at_us=d.now_us))

    costs = d.call.record.costs
    spoken = [GREETING, *reply_sentences, "Closed."]
    assert costs.tts_characters == sum(len(s) for s in spoken)
    assert sum(len(s.text) for s in d.published(Synthesize)) == costs.tts_characters
    assert costs.agent_audio_s == 4.0  # four sentences of 1 s; the empty end markers have none
    assert (costs.llm_prompt_tokens, costs.llm_completion_tokens) == (120, 9)
    assert (costs.llm_replies, costs.llm_replies_without_usage) == (2, 1)
    assert costs.caller_audio_s == costs.stt_audio_s == round((d.now_us - T0) / 1e6, 3) > 0
    assert greeting.turn_id < answer.turn_id < second.turn_id
    assert d.call.record.status == "ended"


def test_a_tts_retry_counts_its_characters_again_and_a_skip_none() -> None:
    d = Driver()
    d.greet()
    d.says("hello")
    while d.pending(TimerKind.END_OF_TURN):
        d.fire(TimerKind.END_OF_TURN)
    answer = d.turn
    d.sentence(answer.turn_id, 0, "Hi there.")
    before = d.call.record.costs.tts_characters
    d.fire(TimerKind.TTS, answer.turn_id, 0)  # no progress: another worker is asked
    assert d.call.record.costs.tts_characters == before + len("Hi there.")
    d.fire(TimerKind.TTS, answer.turn_id, 0)  # failed twice: skipped, no text sent
    assert d.call.record.costs.tts_characters == before + len("Hi there.")


def test_a_reply_done_for_a_cancelled_turn_still_counts_its_tokens() -> None:
    d = Driver()
    d.greet()
    d.says("what is on the menu")
    while d.pending(TimerKind.END_OF_TURN):
        d.fire(TimerKind.END_OF_TURN)
    answer = d.turn
    d.sentence(answer.turn_id, 0, "Soup.")
    d.synthesized(answer.turn_id, 0, 700.0)
    d.audio_sent(answer.turn_id)
    d.speech_started()  # the caller talks over it before the brain is done
    d.wait(1200)
    d.fire(TimerKind.OVERLAP)
    assert answer.cancelled
    done_with(d, answer.turn_id, 1, LlmUsage(prompt_tokens=50, completion_tokens=2))
    assert (d.call.record.costs.llm_prompt_tokens, d.call.record.costs.llm_replies) == (50, 1)


def test_records_written_before_costs_existed_decode_with_zeros() -> None:
    old = {"call_id": "CA1", "call_sid": "CA1", "agent_id": "demo", "status": "ended", "started_at_us": 1}
    record = msgspec.json.decode(msgspec.json.encode(old), type=CallRecord)
    assert record.costs == CallCosts()
    assert msgspec.json.decode(msgspec.json.encode(record), type=CallRecord).costs == CallCosts()
    # and a ReplyDone of a brain that predates usage
    done = msgspec.json.decode(
        b'{"type":"ReplyDone","call_id":"c","turn_id":1,"sentences":1,"at_us":2}', type=ReplyDone
    )
    assert done.usage is None


class Scripted:
    """Two rounds' worth of usage around the words, as a tool-calling reply reports it."""

    name = "scripted"

    async def stream(self, turn: BrainTurn) -> AsyncIterator[BrainEvent]:
        yield FirstToken(1)
        yield Usage(100, 7)
        yield Sentence("One moment.")
        yield Usage(130, 12)

    async def load(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_the_brain_worker_sums_the_usage_into_reply_done(worker_bus: Bus, probe: Probe) -> None:
    worker = await make_worker(worker_bus, Scripted())
    await probe.publish(subjects.BRAIN_TURN, turn())
    [done] = await probe.wait_for(ReplyDone)
    assert done.usage == LlmUsage(prompt_tokens=230, completion_tokens=19)
    await worker.stop()


async def test_the_fake_brain_reports_no_usage(worker_bus: Bus, probe: Probe) -> None:
    worker = await make_worker(worker_bus)
    await probe.publish(subjects.BRAIN_TURN, turn())
    [done] = await probe.wait_for(ReplyDone)
    assert done.usage is None
    await worker.stop()


@pytest.fixture
def chat() -> Iterator[OpenAiChatEmulator]:
    emulator = OpenAiChatEmulator().start()
    yield emulator
    emulator.stop()


async def test_the_openai_provider_passes_on_the_usage_chunk(chat: OpenAiChatEmulator) -> None:
    chat.replies = [Reply("We open at nine.")]
    events: list[Any] = await reply(brain(chat))
    request = chat.requests[0]
    assert request.usage is not None
    usage = [e for e in events if isinstance(e, Usage)]
    assert usage == [Usage(request.usage["prompt_tokens"], request.usage["completion_tokens"])]
    assert usage[0].prompt_tokens > 0 and usage[0].completion_tokens > 0
