"""The TTS worker dies while it speaks a reply: the orchestrator's watchdog asks again
(attempt 1), the gateway drops the dead attempt and plays the new one from its start, and
the caller hears the whole reply once."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.msg import Msg

from proto import AudioFrame, FrameFlags, subjects
from services.brain.providers.fake import fake_reply
from tests.integration.conftest import AUTH_TOKEN, script_for, service_log
from voxline.devstack import DevStack
from voxline.simulator import Utterance, run_call

pytestmark = pytest.mark.integration


async def test_tts_killed_mid_reply_the_retry_is_heard_whole(stack: DevStack) -> None:
    question = "what are your opening hours"
    script = script_for(Utterance(text=question))
    frames: list[AudioFrame] = []
    killed = asyncio.Event()
    assert script.call_sid is not None  # the gateway names the call by its CallSid
    nc = await nats.connect(stack.nats_url)

    async def on_audio(msg: Msg) -> None:
        frame = AudioFrame.decode(msg.data)
        frames.append(frame)
        if not killed.is_set() and not frame.flags & FrameFlags.GREETING:
            stack.processes["tts"].kill()  # SIGKILL on the reply's first audio: the rest is lost
            killed.set()

    await nc.subscribe(subjects.audio_out(script.call_sid), cb=on_audio)
    await nc.flush()
    call = asyncio.create_task(run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN))
    try:
        await asyncio.wait_for(killed.wait(), timeout=30)
        await asyncio.get_running_loop().run_in_executor(None, stack.restart, "tts")
        result = await call
    finally:
        await nc.drain()
        if not stack.processes["tts"].alive:
            stack.restart("tts")

    assert result.accepted and not result.errors, result.errors
    assert [t.completed for t in result.turns] == [True]
    assert "asking another worker" in service_log(stack, "orchestrator")
    assert result.record is not None
    reply = next(t for t in result.record["turns"] if t["kind"] == "reply")
    # Heard whole and once: the dead attempt's audio is neither spliced in nor counted.
    assert reply["heard_text"] == reply["reply_text"] == fake_reply(question)
    reply_frames = [f for f in frames if not f.flags & FrameFlags.GREETING]
    assert reply_frames[0].attempt == 0
    retried = {f.seq for f in reply_frames if f.attempt == 1}
    assert 0 in retried, "the sentence cut by the kill was not synthesized again"
    assert any(f.attempt == 1 and f.flags & FrameFlags.END_OF_TURN for f in reply_frames)
