"""Deepgram live STT in the real stack: the official SDK in the STT service talks to the
Deepgram emulator over a real WebSocket; brain and TTS stay fake; calls come from the
Twilio caller simulator through the gateway."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from tests.cloud.conftest import (
    BackgroundLoop,
    LogsSince,
    all_logs,
    counter_value,
    metrics,
    start_emulator,
    start_stack,
)
from tests.emulators.deepgram import FRAME_MS, DeepgramEmulator
from tests.integration.conftest import AUTH_TOKEN, wait_until
from voxline.agents.turn_options import TurnOptions
from voxline.audio import FRAME_SAMPLES, rms_dbfs
from voxline.devstack import DevStack
from voxline.simulator import CallResult, CallScript, Utterance, run_call
from voxline.simulator.voice import synthesize

pytestmark = pytest.mark.integration

KEY = "dg-test-key-4f1c9a77"
DEMO_KEYWORDS = ["Bright Smile", "cleaning", "whitening", "Delta Dental", "Aetna", "Cigna"]
ERRORS = "voxline_provider_errors_total"


@pytest.fixture(scope="module")
def deepgram(emulator_loop: BackgroundLoop) -> Iterator[DeepgramEmulator]:
    emulator = start_emulator(emulator_loop, DeepgramEmulator(api_key=KEY))
    yield emulator
    emulator_loop.run(emulator.stop())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, deepgram: DeepgramEmulator) -> Iterator[DevStack]:
    env = {
        "VOXLINE_STT_PROVIDER": "deepgram",
        "VOXLINE_DEEPGRAM_URL": deepgram.url,
        "DEEPGRAM_API_KEY": KEY,
        "VOXLINE_DEEPGRAM_STALL_TIMEOUT_S": "1.5",
    }
    s = start_stack(tmp_path_factory, "deepgram", env)
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def healthy(deepgram: DeepgramEmulator) -> None:
    """Each test starts from a well-behaved Deepgram with the published ~300 ms finals."""
    deepgram.api_key, deepgram.final_delay_ms, deepgram.answer_finalize = KEY, 300, True
    deepgram.reject_next, deepgram.drop_after_speech_ms, deepgram.stall_next = [], None, 0


async def call(stack: DevStack, deepgram: DeepgramEmulator, *texts: str, **kwargs: object) -> CallResult:
    deepgram.transcripts = list(texts)
    utterances = kwargs.pop("utterances", None) or [Utterance(text=t) for t in texts]
    script = CallScript(utterances=utterances, **kwargs)  # type: ignore[arg-type]
    return await run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN)


def caller_texts(result: CallResult) -> list[str]:
    assert result.record is not None
    return [t["caller_text"] for t in result.record["turns"] if t["kind"] == "reply"]


async def errors_of(stack: DevStack, kind: str) -> float:
    return counter_value(await metrics(stack, "stt"), ERRORS, provider="deepgram", kind=kind)


def voiced_span_ms(text: str) -> int:
    """Onset to last voiced frame of the caller's audio, measured as the emulator does."""
    pcm = synthesize(text)
    levels = [rms_dbfs(pcm[i : i + FRAME_SAMPLES]) for i in range(0, len(pcm) - FRAME_SAMPLES + 1, FRAME_SAMPLES)]
    voiced = np.flatnonzero(np.array(levels) > -40.0)
    return int(voiced[-1] - voiced[0] + 1) * FRAME_MS


async def test_turns_are_heard_through_deepgram(stack: DevStack, deepgram: DeepgramEmulator) -> None:
    before = len(deepgram.connections)
    result = await call(stack, deepgram, "what are your opening hours", "do you take my insurance")
    assert result.accepted and not result.errors, result.errors
    assert [t.completed for t in result.turns] == [True, True]
    assert caller_texts(result) == ["what are your opening hours", "do you take my insurance"]
    new = deepgram.connections[before:]
    assert len(new) == 1, "one warm socket for the whole call"
    params = new[0]
    assert (params.param("encoding"), params.param("sample_rate"), params.param("channels")) == ("mulaw", "8000", "1")
    assert params.param("model") == "nova-3" and params.params["keyterm"] == DEMO_KEYWORDS
    assert params.param("interim_results") == "true" and params.param("vad_events") == "true"
    # The orchestrator's early pause report (the agent's stt_pause_ms) is Deepgram's endpointing.
    assert params.param("endpointing") == str(TurnOptions().stt_pause_ms) and params.param("utterance_end_ms") == "1000"
    # Closed politely at hang-up: the STT service sends CloseStream when the call's end reaches
    # it over the bus, which can be just after the simulator's call returns.

    async def closed() -> bool:
        return params.close_streams >= 1

    await wait_until(closed, 10, "CloseStream at hang-up")
    assert params.close_streams == 1
    assert result.record is not None
    for turn in (t for t in result.record["turns"] if t["kind"] == "reply"):
        print(f"deepgram turn latency (final_delay 300 ms): {turn['latency']}")


async def test_reply_starts_on_the_answer_to_finalize_before_the_final(
    stack: DevStack, deepgram: DeepgramEmulator
) -> None:
    """Deepgram's interims come once a second, so at the caller's pause the STT sends
    Finalize; its answer holds every word and the brain starts on it (SpeechPaused)."""
    # The answer must come before the endpointing time is over (200 ms of quiet), or the
    # utterance simply ends with it: Deepgram's ~100 ms beyond the silence, not 300.
    deepgram.final_delay_ms = 100
    before = len(deepgram.connections)
    result = await call(stack, deepgram, "what are your opening hours", "do you take my insurance")
    assert result.accepted and not result.errors, result.errors
    assert caller_texts(result) == ["what are your opening hours", "do you take my insurance"]
    assert result.record is not None
    replies = [t for t in result.record["turns"] if t["kind"] == "reply"]
    assert all(t["preemptive"] for t in replies), replies
    assert [t["reply_text"] for t in replies] == [
        "You said: what are your opening hours. This is the Voxline test agent answering your call.",
        "You said: do you take my insurance. This is the Voxline test agent answering your call.",
    ]
    assert deepgram.connections[before].finalizes == 2
    assert [f.from_finalize for f in deepgram.finals[-2:]] == [True, True]
    # When Deepgram does not answer the Finalize (not guaranteed), the reply waits for its final.
    deepgram.answer_finalize = False
    later = await call(stack, deepgram, "where can I park")
    assert later.record is not None and not later.record["turns"][-1]["preemptive"]
    assert caller_texts(later) == ["where can I park"]


def voiced_only(text: str, lead: bool = True) -> np.ndarray:
    """The caller's audio of `text` without espeak's trailing silence (nor its leading one)."""
    pcm = synthesize(text)
    levels = [rms_dbfs(pcm[i : i + FRAME_SAMPLES]) for i in range(0, len(pcm) - FRAME_SAMPLES + 1, FRAME_SAMPLES)]
    voiced = np.flatnonzero(np.array(levels) > -40.0)
    first = 0 if lead else int(voiced[0])
    return pcm[first * FRAME_SAMPLES : (int(voiced[-1]) + 1) * FRAME_SAMPLES]


async def test_caller_going_on_after_the_pause_gets_one_answer_to_all_of_it(
    stack: DevStack, deepgram: DeepgramEmulator, new_logs: LogsSince
) -> None:
    # 140 ms of quiet: long enough for the early pause (80 ms, our Finalize), too short for
    # the endpoint (200 ms), so the preemptive reply on "everything so far" must be dropped.
    # Deepgram answers the Finalize at once here, so that the reply starts within the gap.
    deepgram.final_delay_ms = 0
    said = "I need to cancel my appointment for tomorrow"
    gap = np.zeros(8 * 140, dtype=np.int16)
    audio = np.concatenate(
        [voiced_only("I need to cancel"), gap, voiced_only("my appointment for tomorrow", lead=False)]
    )
    # Deepgram finalizes what it heard at each of our Finalizes: at espeak's 100 ms gap
    # inside "I need to cancel", at the 140 ms one, and at the end.
    pieces = ["I need", "to cancel", "my appointment for tomorrow"]
    result = await call(stack, deepgram, *pieces, utterances=[Utterance(pcm8k=audio)])
    assert result.accepted and not result.errors, result.errors
    assert caller_texts(result) == [said]
    assert result.record is not None and len([t for t in result.record["turns"] if t["kind"] == "reply"]) == 1
    assert "cancelled: caller_continued" in new_logs.of("orchestrator")
    assert result.turns[0].completed


async def test_barge_in_on_deepgram_speech_started(stack: DevStack, deepgram: DeepgramEmulator) -> None:
    first, second = "tell me everything about your clinic", "stop, I have a question"
    utterances = [Utterance(text=first), Utterance(text=second, barge_in_after_ms=600)]
    # The comma is a 160 ms pause: our Finalize there gets "stop," and the end the rest.
    result = await call(stack, deepgram, first, "stop,", "I have a question", utterances=utterances)
    assert result.accepted and not result.errors, result.errors
    assert result.clears >= 1 and len(result.barge_ins) == 1
    assert result.barge_ins[0].stopped_by == "clear"
    assert result.barge_ins[0].cancelled_audio_heard_after_ms == 0
    assert caller_texts(result)[-1] == second and result.turns[-1].completed


async def test_socket_dropped_mid_utterance_loses_no_words(
    stack: DevStack, deepgram: DeepgramEmulator, new_logs: LogsSince
) -> None:
    text = "what are your opening hours on saturday"
    dropped_before = await errors_of(stack, "dropped")
    deepgram.drop_after_speech_ms = 500
    before = len(deepgram.connections)
    result = await call(stack, deepgram, text)
    assert result.accepted and not result.errors, result.errors
    assert caller_texts(result) == [text] and result.turns[0].completed
    new = deepgram.connections[before:]
    assert len(new) == 2 and new[0].dropped and not new[1].dropped
    # The new socket heard the whole utterance: the unacknowledged audio was replayed.
    final = deepgram.finals[-1]
    assert final.connection == new[1].index and final.text == text
    assert abs(final.speech_ms - voiced_span_ms(text)) <= 2 * FRAME_MS
    assert await errors_of(stack, "dropped") == dropped_before + 1
    assert "replaying" in new_logs.of("stt")


async def test_429_and_503_at_connect_are_retried(
    stack: DevStack, deepgram: DeepgramEmulator, new_logs: LogsSince
) -> None:
    limited, server = await errors_of(stack, "rate_limited"), await errors_of(stack, "server")
    deepgram.reject_next = [429, 503]
    before = len(deepgram.rejected)
    result = await call(stack, deepgram, "hello there")
    assert result.accepted and not result.errors, result.errors
    assert caller_texts(result) == ["hello there"]
    assert deepgram.rejected[before:] == [429, 503]
    assert await errors_of(stack, "rate_limited") == limited + 1 and await errors_of(stack, "server") == server + 1
    log = new_logs.of("stt")
    assert "deepgram rate_limited (status 429)" in log and "deepgram server (status 503)" in log


async def test_stalled_socket_is_replaced(stack: DevStack, deepgram: DeepgramEmulator, new_logs: LogsSince) -> None:
    timeouts = await errors_of(stack, "timeout")
    deepgram.stall_next = 1
    before = len(deepgram.connections)
    result = await call(stack, deepgram, "can I book a cleaning")
    assert result.accepted and not result.errors, result.errors
    assert caller_texts(result) == ["can I book a cleaning"]
    new = deepgram.connections[before:]
    assert new[0].stalled and len(new) == 2
    assert await errors_of(stack, "timeout") == timeouts + 1
    assert "no results while audio flows (stall)" in new_logs.of("stt")


async def test_refused_key_ends_the_call_politely(
    stack: DevStack, deepgram: DeepgramEmulator, new_logs: LogsSince
) -> None:
    """401: one SttError, no retry; the orchestrator's reassignment fails at once
    (the provider holds a refused key), so it apologises and hangs up."""
    deepgram.api_key = "a-rotated-key-0000"  # the stack's key is no longer valid
    before, auth = len(deepgram.rejected), await errors_of(stack, "auth")
    try:
        result = await call(stack, deepgram, "hello", reply_timeout_s=5.0)

        async def hung_up() -> bool:
            return "ending the call" in new_logs.of("orchestrator")

        await wait_until(hung_up, timeout=10, what="the orchestrator to end the call")
        assert deepgram.rejected[before:] == [401]
        assert await errors_of(stack, "auth") == auth + 1
        assert result.closed_by_gateway
        assert result.record is not None and result.record["turns"][-1]["kind"] == "failure"
        assert "deepgram auth (status 401)" in new_logs.of("stt")
        logs = all_logs(stack)
        assert KEY not in logs and deepgram.api_key not in logs
    finally:
        stack.restart("stt")  # forget the refused key for any later test
