"""A whole call on the offline stack: the simulated caller asks two questions whose
answers are in the demo agent's prompt, and the agent's *audio* must carry the facts."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
from nats.aio.msg import Msg

from proto import subjects
from proto.audio_frame import AudioFrame
from services.stt.providers.local import LocalSttProvider, glossary
from services.tts.providers.piper import PiperTtsProvider
from tests.local.conftest import speak
from voxline.agents import AgentStore
from voxline.audio import mulaw_to_pcm16, pcm16_to_float
from voxline.bus import Bus
from voxline.devstack import DevStack
from voxline.simulator import CallScript, Utterance, run_call

pytestmark = pytest.mark.asyncio(loop_scope="session")


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+|[0-9]+", text.lower()))


async def test_two_questions_answered_from_the_prompt(
    local_stack: DevStack, whisper: LocalSttProvider, piper: PiperTtsProvider
) -> None:
    script = CallScript(
        agent_id="demo",
        utterances=[
            # Piper rather than the simulator's espeak-ng: tiny.en mishears espeak's robotic
            # voice too often ("What I move you open onto") to test the answers.
            Utterance(pcm8k=await speak(piper, "What time do you open on Saturday?")),
            # Not "Do you take Cigna?": tiny.en hears "Signa" / "signature" too often.
            Utterance(pcm8k=await speak(piper, "How much is teeth whitening?")),
        ],
        reply_timeout_s=30.0,
        record_timeout_s=10.0,
    )
    # The reply audio as the gateway received it, per turn, straight off the bus.
    reply_audio: dict[int, list[AudioFrame]] = defaultdict(list)
    bus = Bus("local-test-listener")
    await bus.connect(local_stack.probe_url)

    async def on_frame(frame: AudioFrame, _: Msg) -> None:
        reply_audio[frame.turn_id].append(frame)

    assert script.call_sid
    await bus.subscribe_frames(subjects.audio_out(script.call_sid), on_frame)
    try:
        result = await run_call(local_stack.gateway_url, script)
    finally:
        await bus.close()

    assert result.accepted and not result.errors, result.errors
    assert result.record is not None
    replies: list[dict[str, Any]] = [t for t in result.record["turns"] if t["kind"] == "reply"]
    assert len(replies) == 2, result.record["turns"]
    for turn in replies:
        print(f"\nturn {turn['turn_id']}: {turn['caller_text']!r} -> {turn['reply_text']!r}\n  {turn['latency']}")

    assert {"saturday"} <= words(replies[0]["caller_text"]), replies[0]
    assert {"teeth", "whitening"} <= words(replies[1]["caller_text"]), replies[1]

    prompt = glossary(AgentStore().get("demo").keywords)
    heard: list[set[str]] = []
    for turn in replies:
        frames = sorted(reply_audio[turn["turn_id"]], key=lambda f: (f.seq, f.chunk))
        pcm = mulaw_to_pcm16(b"".join(f.payload for f in frames))
        assert len(pcm) > 8000, f"turn {turn['turn_id']}: under a second of reply audio"
        text, _ = await whisper.transcribe(pcm16_to_float(np.asarray(pcm)), prompt)
        print(f"  reply audio transcribed: {text!r}")
        heard.append(words(text))
    assert heard[0] & {"9", "nine"}, heard[0]
    assert heard[1] & {"350", "fifty"}, heard[1]
