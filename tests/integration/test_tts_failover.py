"""A TTS worker dies while it speaks a reply: the orchestrator's watchdog, following the
sentence's progress reports, asks the other worker again (attempt 1), the gateway drops the
dead attempt and plays the new one from its start, and the caller hears the whole reply
once.

Two TTS workers, so the retry has somewhere to go whatever the restart takes; the one
killed is the one whose progress reports carry the sentence (`SynthesisProgress.worker_id`
matched against each worker's /status). The watchdog's wait for *first* audio
(VOXLINE_TTS_TIMEOUT_S) is set far beyond the caller's patience: only the progress
watchdog can save the reply, so these tests fail if it is not there."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import nats
import pytest
from nats.aio.msg import Msg

from proto import AudioFrame, FrameFlags, decode, subjects
from proto.messages import SynthesisProgress
from services.brain.providers.fake import fake_reply
from tests.integration.conftest import AUTH_TOKEN, own_stack, script_for, service_log
from voxline.devstack import DevStack
from voxline.simulator import CallResult, Utterance, run_call

pytestmark = pytest.mark.integration

TTS_WORKERS = ("tts", "tts-2")
FIRST_AUDIO_TIMEOUT_S = 45  # beyond every reply timeout below


@pytest.fixture(scope="module")
def two_tts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    env = {"VOXLINE_TTS_TIMEOUT_S": str(FIRST_AUDIO_TIMEOUT_S)}
    with own_stack(tmp_path_factory, "tts-failover", env) as stack:
        assert stack.add_instance("tts") == "tts-2"
        yield stack


class Kill:
    """Watches the call's reply audio and TTS reports on the bus; SIGKILLs the TTS worker
    synthesizing the reply's first sentence once `after_chunks` chunks of it went out."""

    def __init__(self, stack: DevStack, workers: dict[str, str], after_chunks: int) -> None:
        self.stack, self.workers, self.after_chunks = stack, workers, after_chunks
        self.frames: list[AudioFrame] = []
        self.reports: list[SynthesisProgress] = []
        self.reply_turn = 0
        self.killed = asyncio.Event()

    def on_audio(self, msg: Msg) -> None:
        frame = AudioFrame.decode(msg.data)
        self.frames.append(frame)
        if not self.reply_turn and not frame.flags & FrameFlags.GREETING:
            self.reply_turn = frame.turn_id
        self._maybe_kill()

    def on_report(self, msg: Msg) -> None:
        report = decode(msg.data)
        if isinstance(report, SynthesisProgress):
            self.reports.append(report)
            self._maybe_kill()

    def dead_attempt(self) -> list[AudioFrame]:
        return [f for f in self.frames if (f.turn_id, f.seq, f.attempt) == (self.reply_turn, 0, 0)]

    def _maybe_kill(self) -> None:
        """Each subscription has its own task: a report may come before or after the frames
        it follows, so both callbacks look."""
        if self.killed.is_set() or not self.reply_turn:
            return
        holder = next(
            (r.worker_id for r in self.reports if (r.turn_id, r.seq, r.attempt) == (self.reply_turn, 0, 0)), ""
        )
        if holder and max((f.chunk for f in self.dead_attempt()), default=-1) >= self.after_chunks:
            self.stack.processes[self.workers[holder]].kill()  # SIGKILL: the rest of the sentence is lost
            self.killed.set()


async def tts_workers(stack: DevStack) -> dict[str, str]:
    """worker id (as in SynthesisProgress) -> the process key, from each worker's /status."""
    found = {}
    async with httpx.AsyncClient() as http:
        for key in TTS_WORKERS:
            status = (await http.get(f"http://127.0.0.1:{stack.health_port(key)}/status")).json()
            found[status["worker_id"]] = key
    assert len(found) == len(TTS_WORKERS)
    return found


async def call_with_a_kill(stack: DevStack, question: str, after_chunks: int) -> tuple[CallResult, Kill]:
    script = script_for(Utterance(text=question), reply_timeout_s=30.0)
    assert script.call_sid is not None  # the gateway names the call by its CallSid
    kill = Kill(stack, await tts_workers(stack), after_chunks)
    nc = await nats.connect(stack.probe_url)

    async def on_audio(msg: Msg) -> None:
        kill.on_audio(msg)

    async def on_report(msg: Msg) -> None:
        kill.on_report(msg)

    await nc.subscribe(subjects.audio_out(script.call_sid), cb=on_audio)
    await nc.subscribe(subjects.tts_events(script.call_sid), cb=on_report)
    await nc.flush()
    try:
        result = await run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN)
    finally:
        await nc.drain()
        for key in TTS_WORKERS:
            if not stack.processes[key].alive:
                await asyncio.get_running_loop().run_in_executor(None, stack.restart, key)
    assert kill.killed.is_set(), "no TTS worker was killed"
    return result, kill


def assert_heard_whole_and_once(result: CallResult, kill: Kill, question: str) -> None:
    assert result.accepted and not result.errors, result.errors
    assert [t.completed for t in result.turns] == [True]
    assert result.record is not None
    reply = next(t for t in result.record["turns"] if t["kind"] == "reply")
    # Heard whole and once: the dead attempt's audio is neither spliced in nor counted.
    assert reply["heard_text"] == reply["reply_text"] == fake_reply(question)
    reply_frames = [f for f in kill.frames if f.turn_id == kill.reply_turn]
    retried = [f for f in reply_frames if (f.seq, f.attempt) == (0, 1)]
    assert retried and retried[0].chunk == 0, "the sentence cut by the kill was not synthesized again"
    assert any(f.flags & FrameFlags.END_OF_SENTENCE for f in retried)
    assert any(f.flags & FrameFlags.END_OF_TURN for f in reply_frames)


async def test_tts_killed_on_the_replys_first_audio_the_retry_is_heard_whole(two_tts: DevStack) -> None:
    question = "what are your opening hours"
    result, kill = await call_with_a_kill(two_tts, question, after_chunks=0)
    assert "no TTS progress on turn" in service_log(two_tts, "orchestrator")
    assert_heard_whole_and_once(result, kill, question)


async def test_tts_killed_in_the_middle_of_a_long_sentence_the_reply_goes_on(two_tts: DevStack) -> None:
    """The worker dies after ten chunks (a second of audio) of a sentence of about seven
    seconds: the watchdog notices from the missing progress reports, not after the first
    audio timeout (45 s, beyond the caller's 30 s patience: failed before)."""
    question = (
        "what are your opening hours on weekdays and on weekends and on public holidays "
        "and during the summer school holidays"
    )
    result, kill = await call_with_a_kill(two_tts, question, after_chunks=10)
    dead = kill.dead_attempt()
    assert max(f.chunk for f in dead) >= 10, "killed before ten chunks of the sentence went out"
    assert not any(f.flags & FrameFlags.END_OF_SENTENCE for f in dead), "the sentence was done before the kill"
    assert_heard_whole_and_once(result, kill, question)
