"""The whole seed stack at once, every provider a cloud one: Deepgram live STT, OpenAI
GPT-4o and ElevenLabs Flash stream-input, each the official SDK in its service talking to
the provider's emulator, with the emulators answering at the providers' published
latencies. Calls come from the Twilio caller simulator through the gateway.

Latencies are printed, never asserted: on a shared machine they are benchmarks, not tests."""

from __future__ import annotations

import statistics
from collections.abc import Iterator

import pytest

from tests.cloud.conftest import BackgroundLoop, running, start_emulator, start_stack
from tests.cloud.test_brain_openai import replies
from tests.cloud.test_deepgram import KEY as DG_KEY
from tests.cloud.test_deepgram import call, caller_texts
from tests.emulators.deepgram import DeepgramEmulator
from tests.emulators.elevenlabs import DEFAULT_KEY as EL_KEY
from tests.emulators.elevenlabs import ElevenLabsEmulator
from tests.emulators.openai_chat import DEFAULT_KEY as OA_KEY
from tests.emulators.openai_chat import GPT4O_TTFT_MS, OpenAiChatEmulator, Reply
from voxline.agents.turn_options import TurnOptions
from voxline.devstack import DevStack
from voxline.simulator import Utterance

pytestmark = pytest.mark.integration

DEEPGRAM_FINAL_MS = 300  # Deepgram: final transcript ~300 ms after the end of speech
# The emulator endpoints after `endpointing` ms of silence (our SttAssign.pause_ms), then
# waits final_delay_ms: together the published ~300 ms ("sub-300 ms" streaming latency,
# https://deepgram.com/learn/understanding-and-reducing-latency-in-speech-to-text-apis).
# The same final_delay_ms answers our Finalize (ASSUMPTION: Deepgram publishes no figure,
# https://developers.deepgram.com/docs/finalize); interims come once a second of audio
# (https://developers.deepgram.com/docs/using-interim-results), never at a pause.
ENDPOINTING_MS = TurnOptions().stt_pause_ms
GPT4O_TOKENS_PER_S = 80.0
FLASH_TTFB_MS = 100.0  # ElevenLabs Flash: first audio ~100 ms after a flush

QUESTIONS = [
    "what are your opening hours",
    "do you take my insurance",
    "how much is a cleaning",
    "where can I park my car",
    "can I see doctor Lopez next week",
]
ANSWERS = [
    "We are open Monday to Friday from eight to six.",
    "Yes, we accept Delta Dental, Aetna and Cigna.",
    "A check-up with cleaning costs one hundred and twenty dollars.",
    "There is free parking behind the building.",
    "Doctor Lopez has time on Tuesday afternoon. Shall I book it?",
]


@pytest.fixture(scope="module")
def deepgram(emulator_loop: BackgroundLoop) -> Iterator[DeepgramEmulator]:
    emulator = start_emulator(emulator_loop, DeepgramEmulator(api_key=DG_KEY))
    yield emulator
    emulator_loop.run(emulator.stop())


@pytest.fixture(scope="module")
def el() -> Iterator[ElevenLabsEmulator]:
    yield from running(ElevenLabsEmulator())


@pytest.fixture(autouse=True)
def published_latencies(deepgram: DeepgramEmulator, chat: OpenAiChatEmulator, el: ElevenLabsEmulator) -> None:
    chat.reset()
    el.reset()
    deepgram.final_delay_ms = DEEPGRAM_FINAL_MS - ENDPOINTING_MS
    chat.ttft_ms, chat.tokens_per_s = GPT4O_TTFT_MS, GPT4O_TOKENS_PER_S
    el.ttfb_ms = FLASH_TTFB_MS


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    deepgram: DeepgramEmulator,
    chat: OpenAiChatEmulator,
    el: ElevenLabsEmulator,
) -> Iterator[DevStack]:
    env = {
        "VOXLINE_STT_PROVIDER": "deepgram",
        "VOXLINE_DEEPGRAM_URL": deepgram.url,
        "DEEPGRAM_API_KEY": DG_KEY,
        "VOXLINE_BRAIN_PROVIDER": "openai",
        "VOXLINE_OPENAI_API_KEY": OA_KEY,
        "VOXLINE_OPENAI_BASE_URL": chat.base_url,
        "VOXLINE_TTS_PROVIDER": "elevenlabs",
        "ELEVENLABS_API_KEY": EL_KEY,
        "VOXLINE_ELEVENLABS_BASE_URL": el.url,
    }
    s = start_stack(tmp_path_factory, "seed", env)
    yield s
    s.stop()


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def median_ms(values: list[float]) -> str:
    return ms(statistics.median(values) if values else None)


async def test_seed_stack_turns_latency(
    stack: DevStack, deepgram: DeepgramEmulator, chat: OpenAiChatEmulator, el: ElevenLabsEmulator
) -> None:
    chat.answers = {q: Reply(a) for q, a in zip(QUESTIONS, ANSWERS, strict=True)}
    result = await call(stack, deepgram, *QUESTIONS)
    assert result.accepted and not result.errors, (result.errors, result.notes)
    assert [t.completed for t in result.turns] == [True] * len(QUESTIONS)
    turn_ids = [t.turn_id or 0 for t in result.turns]  # each utterance's reply, by its turn's marks
    assert 0 not in turn_ids and turn_ids == sorted(set(turn_ids)), turn_ids
    assert caller_texts(result) == QUESTIONS
    turns = replies(result)
    assert [(t["kind"], t["reply_text"]) for t in turns] == [("reply", text) for text in ANSWERS]
    # Every provider really served the call: one chat completion per question, in order,
    # and each reply spoken by ElevenLabs.
    # (A question may be asked twice: a preemptive request at an early pause, dropped when
    # the caller went on, then the one for the whole utterance.)
    asked = [r.messages[-1]["content"] for r in chat.requests]
    assert list(dict.fromkeys(asked)) == QUESTIONS, asked
    assert all(r.body["model"] == "gpt-4o" for r in chat.requests)
    assert {r.messages[-1]["content"] for r in chat.requests if r.completed} == set(QUESTIONS)
    spoken = " ".join(" ".join(text for s in el.text_sessions() for text in s.texts).split())
    assert all(text in spoken for text in ANSWERS), spoken

    latencies = [t.first_media_latency_ms for t in result.turns]
    stages = [t["latency"] for t in turns]
    print(f"\nseed stack: deepgram final {DEEPGRAM_FINAL_MS} ms, gpt-4o TTFT {GPT4O_TTFT_MS:.0f} ms at ", end="")
    print(f"{GPT4O_TOKENS_PER_S:.0f} tok/s, elevenlabs flash TTFB {FLASH_TTFB_MS:.0f} ms")
    print(f"greeting: stream start -> first audio {ms(result.greeting_latency_ms)} ms")
    for i, (latency, stage) in enumerate(zip(latencies, stages, strict=True), 1):
        print(f"turn {i}: speech end -> first reply audio {ms(latency)} ms; stages (ms) {stage}")
    later = [x for x in latencies[1:] if x is not None]
    overheads = [s["pipeline_overhead"] for s in stages if "pipeline_overhead" in s]
    print(
        f"summary: first turn {ms(latencies[0])} ms, later turns median {median_ms(later)}"
        f" ms (min {ms(min(later, default=None))}, max {ms(max(later, default=None))}),"
        f" pipeline_overhead median {median_ms(overheads)} ms"
        f" over {len(overheads)} turns; median of all turns {median_ms([x for x in latencies if x is not None])} ms;"
        f" {len(chat.requests)} chat requests for {len(QUESTIONS)} questions"
    )


async def test_seed_stack_barge_in(
    stack: DevStack, deepgram: DeepgramEmulator, chat: OpenAiChatEmulator, el: ElevenLabsEmulator
) -> None:
    first, second = "tell me everything about your clinic", "stop I have a question"
    long = (
        "Bright Smile Dental is a family clinic on Maple Street next to the public library where Doctor Lopez"
        " and Doctor Chen look after patients of every age from their very first check-up onwards. We offer"
        " cleanings and fillings and whitening and emergency visits and we welcome new patients every day."
    )
    chat.answers = {first: Reply(long), second: Reply("Of course, what is your question?")}
    # Flash synthesises faster than playback: the reply's audio waits in Twilio's buffer
    # when the caller talks over it, so only `clear` can keep it from being heard.
    utterances = [Utterance(text=first), Utterance(text=second, barge_in_after_ms=1500)]
    result = await call(stack, deepgram, first, second, utterances=utterances)
    assert result.accepted and not result.errors, (result.errors, result.notes)
    assert result.clears >= 1 and len(result.barge_ins) == 1
    barge = result.barge_ins[0]
    assert barge.stopped_by == "clear" and barge.interrupted_turn == result.turns[0].turn_id
    assert barge.cancelled_audio_heard_after_ms == 0
    interrupted, answer = replies(result)
    assert interrupted["interrupted"] and interrupted["cancel_reason"] == "barge_in"
    assert interrupted["reply_text"] == long
    assert long.startswith(interrupted["heard_text"]) and 0 < len(interrupted["heard_text"]) < len(long) / 2
    assert answer["caller_text"] == second and answer["reply_text"] == "Of course, what is your question?"
    assert result.turns[-1].completed
    print(
        f"\nseed stack barge-in: caller onset -> agent voice stops {ms(barge.latency_ms)} ms (stopped by"
        f" {barge.stopped_by}); cancelled audio heard after {barge.cancelled_audio_heard_after_ms} ms;"
        f" then speech end -> first reply audio {ms(result.turns[-1].first_media_latency_ms)} ms,"
        f" stages (ms) {answer['latency']}"
    )
