"""A noisy line through Deepgram: bursts of noise and the agent's own echo on the caller's
side trip Deepgram's SpeechStarted (it fires on noise), yet no reply is cut and no turn
starts; a real interruption still cuts the reply. Real stack (Deepgram STT through its
emulator, fake brain and TTS) over a real nats-server; calls from the Twilio simulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cloud.conftest import BackgroundLoop, LogsSince, start_emulator, start_stack
from tests.cloud.test_deepgram import KEY, caller_texts
from tests.emulators.deepgram import DeepgramEmulator
from tests.integration.conftest import AUTH_TOKEN
from voxline.devstack import DevStack
from voxline.simulator import CallScript, Utterance, run_call
from voxline.simulator.line_noise import LineNoise

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deepgram(emulator_loop: BackgroundLoop) -> Iterator[DeepgramEmulator]:
    emulator = start_emulator(emulator_loop, DeepgramEmulator(api_key=KEY, final_delay_ms=100))
    yield emulator
    emulator_loop.run(emulator.stop())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, deepgram: DeepgramEmulator) -> Iterator[DevStack]:
    env = {"VOXLINE_STT_PROVIDER": "deepgram", "VOXLINE_DEEPGRAM_URL": deepgram.url, "DEEPGRAM_API_KEY": KEY}
    s = start_stack(tmp_path_factory, "noisy-line", env)
    yield s
    s.stop()


def lines_with(log: str, text: str) -> list[int]:
    return [i for i, line in enumerate(log.splitlines()) if text in line]


async def test_noise_and_echo_cut_no_reply_but_an_interruption_does(
    stack: DevStack, deepgram: DeepgramEmulator, new_logs: LogsSince
) -> None:
    questions = ["what are your opening hours", "do you take my insurance", "stop I have a question"]
    deepgram.transcripts = list(questions)
    # Echo all along; bursts during the second reply only (the one the caller interrupts
    # later): the simulator would take a reply paused by a burst (a clear) for a finished one.
    noise = LineNoise(burst_every_ms=700, burst_ms=250, burst_dbfs=-30.0, echo_gain_db=-30.0, bursts_after=2)
    utterances = [Utterance(text=questions[0]), Utterance(text=questions[1]), Utterance(text=questions[2])]
    utterances[2].barge_in_after_ms = 3000  # into the second reply, after its first bursts
    before = len(deepgram.connections)
    script = CallScript(utterances=utterances, line_noise=noise, reply_timeout_s=30.0)
    result = await run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN)
    assert result.accepted and not result.errors, (result.errors, result.notes)

    # The line really was noisy, and Deepgram heard "speech" in it beyond the caller's.
    assert len(noise.bursts) >= 2 and noise.echo_frames > 100, (noise.bursts, noise.echo_frames)
    connection = deepgram.connections[before]
    assert connection.speech_starts > len(questions), connection.speech_starts

    # No turn started from noise: one reply per question, each to the question asked.
    assert caller_texts(result) == questions
    assert result.record is not None
    replies = [t for t in result.record["turns"] if t["kind"] == "reply"]
    assert len(replies) == 3
    first, second, third = replies
    # Echo alone never stopped the agent: the first reply played whole, unpaused.
    assert not first["interrupted"] and first["cancel_reason"] == "" and first["paused"] == 0
    assert first["heard_text"] == first["reply_text"] and result.turns[0].completed
    # Bursts paused the second reply (the caller's first sound stops the agent) and it went on.
    assert second["paused"] >= 1, replies
    # The real interruption cut the second reply, and got its own answer.
    assert second["interrupted"] and second["cancel_reason"] == "barge_in"
    # (Whether the agent was audible at the caller's onset depends on where the bursts
    # fell, so the simulator's barge-in timing is not asserted; what the caller heard is.)
    assert second["reply_text"].startswith(second["heard_text"]) and second["heard_text"] != second["reply_text"]
    assert third["caller_text"] == questions[2] and not third["interrupted"] and result.turns[2].completed

    # In order: noise came and went without an interruption before the caller's real one.
    log = new_logs.of("orchestrator")
    noise_lines = lines_with(log, "not an interruption (noise)")
    barge_lines = lines_with(log, "barge-in on turn")
    assert noise_lines and len(barge_lines) == 1, (noise_lines, barge_lines)
    assert f"barge-in on turn {second['turn_id']} confirmed" in log.splitlines()[barge_lines[0]]
    assert min(noise_lines) < barge_lines[0]
    assert "ended as noise" in new_logs.of("stt")
