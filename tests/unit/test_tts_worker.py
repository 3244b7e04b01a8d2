"""The TTS worker's sentence handling (frames, closing frame on every outcome, cancel,
call end, stop), the worker in-process on a real bus and a real nats-server."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest

from proto import subjects
from proto.audio_frame import AudioFrame, FrameFlags
from proto.headers import CALL_ID, TURN_ID
from proto.messages import CallEnded, SentenceSynthesized, SynthesisProgress, Synthesize, TtsError, TurnCancel
from services.common import TurnsInFlight
from services.tts.providers import make_provider
from services.tts.providers.fake import fake_speech
from services.tts.worker import TtsWorker
from tests.unit.bus_probe import NatsServer, Probe, settle
from voxline.bus import Bus
from voxline.config import TtsSettings

EOS = FrameFlags.END_OF_SENTENCE
EOT = FrameFlags.END_OF_TURN


@pytest.fixture(autouse=True)
def no_stop_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sentences still running when a test stops its worker are cut at once."""
    monkeypatch.setattr("services.common.STOP_GRACE_S", 0.0)


class GatedProvider:
    """Yields what the test pushes: bytes, an exception to raise, or None to finish; tells
    the test when each text's synthesis starts and when its stream is closed."""

    name = "gated"

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | Exception | None] = asyncio.Queue()
        self.started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.closed: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    async def synthesize(self, text: str, voice: str) -> AsyncIterator[bytes]:
        self.started[text].set()
        try:
            while (item := await self.queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.closed[text].set()

    async def wait_started(self, text: str) -> None:
        await asyncio.wait_for(self.started[text].wait(), timeout=5)

    async def wait_closed(self, text: str) -> None:
        await asyncio.wait_for(self.closed[text].wait(), timeout=5)

    async def close(self) -> None:
        pass


async def make_worker(bus: Bus, provider: Any = None, **settings: Any) -> TtsWorker:
    config = TtsSettings(fake_ttfb_ms=0, tts_chunk_ms=100, **settings)
    worker = TtsWorker(bus, config, provider or make_provider("fake", config))
    await worker.start()
    await settle(bus)
    return worker


def say(text: str, turn_id: int = 1, seq: int = 0, call_id: str = "c1", attempt: int = 0, **flags: bool) -> Synthesize:
    request = Synthesize(call_id=call_id, turn_id=turn_id, seq=seq, text=text, requested_at_us=0, attempt=attempt)
    return msgspec.structs.replace(request, **flags)


def frames(probe: Probe, call_id: str = "c1") -> list[AudioFrame]:
    """The reply audio the worker published for the call, in order."""
    return [
        s.item for s in probe.received() if isinstance(s.item, AudioFrame) and s.subject == subjects.audio_out(call_id)
    ]


def reports(probe: Probe, call_id: str = "c1") -> list[SentenceSynthesized | TtsError | SynthesisProgress]:
    """What the worker reported about the call's sentences; every report is on its call's subject."""
    found = []
    for seen in probe.received():
        if not isinstance(seen.item, AudioFrame):
            assert isinstance(seen.item, SentenceSynthesized | TtsError | SynthesisProgress), seen
            assert seen.subject == subjects.tts_events(seen.item.call_id), seen
            if seen.item.call_id == call_id:
                found.append(seen.item)
    return found


def events(probe: Probe, call_id: str = "c1") -> list[SentenceSynthesized | TtsError]:
    """The sentences' outcomes (results and errors), without the progress reports."""
    return [r for r in reports(probe, call_id) if not isinstance(r, SynthesisProgress)]


def progress(probe: Probe, call_id: str = "c1") -> list[SynthesisProgress]:
    return [r for r in reports(probe, call_id) if isinstance(r, SynthesisProgress)]


async def test_sentence_becomes_ordered_chunks_closed_by_end_of_sentence(worker_bus: Bus, probe: Probe) -> None:
    worker = await make_worker(worker_bus)
    text = "We are open from nine to five."
    await probe.publish(subjects.TTS_SYNTHESIZE, say(text, turn_id=4, seq=2))
    await probe.until(lambda: bool(events(probe)), "the sentence's report")

    audio = frames(probe)
    assert b"".join(f.payload for f in audio) == fake_speech(text, worker.settings.fake_ms_per_char)
    assert [f.chunk for f in audio] == list(range(len(audio)))
    assert all(f.turn_id == 4 and f.seq == 2 for f in audio)
    assert all(len(f.payload) == 800 for f in audio[:-1])
    assert [f.flags for f in audio] == [FrameFlags.NONE] * (len(audio) - 1) + [EOS]
    for seen in probe.received():
        if isinstance(seen.item, AudioFrame):
            assert seen.subject == subjects.audio_out("c1")
            assert seen.headers == {}  # 50 a second: whose it is is in its binary header
        else:
            assert seen.headers[CALL_ID] == "c1" and seen.headers[TURN_ID] == "4"
    [done] = events(probe)
    assert isinstance(done, SentenceSynthesized) and (done.turn_id, done.seq) == (4, 2)
    assert done.audio_ms == pytest.approx(len(text) * worker.settings.fake_ms_per_char, abs=1)
    assert done.first_audio_us == audio[0].timestamp_us
    await worker.stop()


async def test_empty_last_sentence_is_one_empty_closing_frame(worker_bus: Bus, probe: Probe) -> None:
    worker = await make_worker(worker_bus)
    await probe.publish(subjects.TTS_SYNTHESIZE, say("", seq=3, last=True, greeting=True))
    await probe.until(lambda: bool(events(probe)), "the sentence's report")
    [frame] = frames(probe)
    assert frame.payload == b"" and frame.seq == 3 and frame.chunk == 0
    assert frame.flags == EOS | EOT | FrameFlags.GREETING
    [done] = events(probe)
    assert isinstance(done, SentenceSynthesized) and done.audio_ms == 0
    await worker.stop()


async def test_every_frame_and_report_echoes_the_synthesis_attempt(worker_bus: Bus, probe: Probe) -> None:
    """The gateway plays only the newest attempt of a sentence: a retry, a skip (empty
    text) and a failed retry must each carry the attempt they answer."""
    provider = GatedProvider()
    worker = await make_worker(worker_bus, provider)
    await probe.publish(subjects.TTS_SYNTHESIZE, say("Said again.", seq=0, attempt=2))
    provider.queue.put_nowait(b"\x7f" * 1000)
    provider.queue.put_nowait(None)
    await probe.until(lambda: len(events(probe)) == 1, "the retried sentence's report")
    await probe.publish(subjects.TTS_SYNTHESIZE, say("", seq=1, attempt=3, last=True))
    await probe.until(lambda: len(events(probe)) == 2, "the skipped sentence's report")
    await probe.publish(subjects.TTS_SYNTHESIZE, say("Fails again.", seq=2, attempt=1))
    provider.queue.put_nowait(RuntimeError("voice not found"))
    await probe.until(lambda: len(events(probe)) == 3, "the failed sentence's report")

    by_seq = {seq: [f.attempt for f in frames(probe) if f.seq == seq] for seq in (0, 1, 2)}
    assert by_seq == {0: [2, 2], 1: [3], 2: [1]}
    done, skipped, failed = events(probe)
    assert isinstance(done, SentenceSynthesized) and (done.seq, done.attempt) == (0, 2)
    assert isinstance(skipped, SentenceSynthesized) and (skipped.seq, skipped.attempt) == (1, 3)
    assert isinstance(failed, TtsError) and (failed.seq, failed.attempt) == (2, 1)
    await worker.stop()


async def test_greeting_flag_is_on_every_chunk_and_end_of_turn_on_the_last(worker_bus: Bus, probe: Probe) -> None:
    worker = await make_worker(worker_bus)
    await probe.publish(subjects.TTS_SYNTHESIZE, say("Hello, thanks for calling.", last=True, greeting=True))
    await probe.until(lambda: bool(events(probe)), "the sentence's report")
    audio = frames(probe)
    assert len(audio) > 1
    assert all(f.flags & FrameFlags.GREETING for f in audio)
    assert [bool(f.flags & EOT) for f in audio] == [False] * (len(audio) - 1) + [True]
    await worker.stop()


async def test_first_chunk_goes_out_before_synthesis_ends(worker_bus: Bus, probe: Probe) -> None:
    provider = GatedProvider()
    worker = await make_worker(worker_bus, provider)
    await probe.publish(subjects.TTS_SYNTHESIZE, say("A long sentence."))
    provider.queue.put_nowait(b"\x7f" * 1000)
    await probe.until(lambda: len(frames(probe)) == 1, "the first chunk")
    assert frames(probe)[0].payload == b"\x7f" * 800 and not events(probe)
    provider.queue.put_nowait(None)
    await probe.until(lambda: bool(events(probe)), "the sentence's report")
    assert [len(f.payload) for f in frames(probe)] == [800, 200]
    await worker.stop()


async def test_progress_is_reported_with_the_first_chunk_then_at_most_once_an_interval(
    worker_bus: Bus, probe: Probe
) -> None:
    """The orchestrator's watchdog follows these reports: the first chunk is reported at
    once; later chunks only once the interval has passed since the last report, so a
    sentence's audio costs a few reports a second, not one per chunk."""
    provider = GatedProvider()
    worker = await make_worker(worker_bus, provider, tts_progress_interval_s=3600.0, instance_id="tts-a")
    await probe.publish(subjects.TTS_SYNTHESIZE, say("A long sentence.", turn_id=3, seq=1, attempt=1))
    provider.queue.put_nowait(b"\x7f" * 1000)
    await probe.until(lambda: bool(progress(probe)), "the first chunk's report")
    [first] = progress(probe)
    assert (first.turn_id, first.seq, first.attempt, first.chunks, first.worker_id) == (3, 1, 1, 1, "tts-a")
    assert first.at_us == frames(probe)[0].timestamp_us
    provider.queue.put_nowait(b"\x7f" * 4000)  # five more chunks within the interval: no report
    await probe.until(lambda: len(frames(probe)) == 6, "five more chunks")
    worker.settings.tts_progress_interval_s = 0.0  # the interval has passed: the next chunk is reported
    provider.queue.put_nowait(b"\x7f" * 800)
    await probe.until(lambda: len(progress(probe)) == 2, "the next report")
    assert progress(probe)[1].chunks == 7
    provider.queue.put_nowait(None)  # the last chunk: the result follows, no report before it
    await probe.until(lambda: bool(events(probe)), "the sentence's report")
    assert [type(r) for r in reports(probe)] == [SynthesisProgress, SynthesisProgress, SentenceSynthesized]
    await worker.stop()


async def test_an_empty_sentence_reports_no_progress(worker_bus: Bus, probe: Probe) -> None:
    worker = await make_worker(worker_bus)
    await probe.publish(subjects.TTS_SYNTHESIZE, say("", seq=3, last=True))
    await probe.until(lambda: bool(events(probe)), "the sentence's report")
    assert not progress(probe)
    await worker.stop()


async def test_provider_failure_still_closes_the_sentence_then_reports(worker_bus: Bus, probe: Probe) -> None:
    provider = GatedProvider()
    worker = await make_worker(worker_bus, provider)
    await probe.publish(subjects.TTS_SYNTHESIZE, say("Doomed sentence.", last=True))
    provider.queue.put_nowait(b"\x7f" * 900)
    provider.queue.put_nowait(RuntimeError("voice not found"))
    await probe.until(lambda: bool(events(probe)), "the sentence's report")

    audio = frames(probe)
    assert [len(f.payload) for f in audio] == [800, 100]
    assert audio[-1].flags == EOS | EOT
    [error] = events(probe)
    assert isinstance(error, TtsError) and "gated" in error.message and "voice not found" in error.message
    await worker.stop()


async def test_a_silent_provider_times_out_and_the_sentence_is_closed(worker_bus: Bus, probe: Probe) -> None:
    provider = GatedProvider()
    worker = await make_worker(worker_bus, provider, tts_stall_timeout_s=0.05)
    await probe.publish(subjects.TTS_SYNTHESIZE, say("Never spoken."))
    await probe.until(lambda: bool(events(probe)), "the sentence's report")
    [frame] = frames(probe)
    assert frame.payload == b"" and frame.flags == EOS
    [error] = events(probe)
    assert isinstance(error, TtsError) and "no audio" in error.message
    await provider.wait_closed("Never spoken.")
    await worker.stop()


async def test_cancel_stops_synthesis_without_a_closing_frame(worker_bus: Bus, probe: Probe) -> None:
    provider = GatedProvider()
    worker = await make_worker(worker_bus, provider)
    await probe.publish(subjects.TTS_SYNTHESIZE, say("Interrupted.", turn_id=2))
    provider.queue.put_nowait(b"\x7f" * 1000)
    await probe.until(lambda: len(frames(probe)) == 1, "the first chunk")

    await probe.publish(subjects.turn_cancel("c1"), TurnCancel(call_id="c1", turn_id=2, reason="barge_in", at_us=0))
    await provider.wait_closed("Interrupted.")
    await probe.caught_up(worker_bus)
    assert len(frames(probe)) == 1 and not events(probe)
    # A sentence of the cancelled turn that arrives late is not spoken at all; the
    # bystander's sentence after it, on the same subscription, shows it was handled.
    await probe.publish(subjects.TTS_SYNTHESIZE, say("Late sentence.", turn_id=2, seq=1))
    await probe.publish(subjects.TTS_SYNTHESIZE, say("", call_id="bystander"))
    await probe.until(lambda: bool(events(probe, "bystander")), "the bystander's report")
    assert all(t.call_id != "c1" for t in worker.status().turns)
    await worker.stop()
    await probe.caught_up(worker_bus)
    assert len(frames(probe)) == 1 and not events(probe)


async def test_call_end_stops_only_that_call(worker_bus: Bus, probe: Probe) -> None:
    provider = GatedProvider()
    worker = await make_worker(worker_bus, provider)
    await probe.publish(subjects.TTS_SYNTHESIZE, say("First call.", call_id="c1"))
    await probe.publish(subjects.TTS_SYNTHESIZE, say("Second call.", call_id="c2"))
    await provider.wait_started("First call.")
    await provider.wait_started("Second call.")
    await probe.publish(subjects.CALL_ENDED, CallEnded(call_id="c1", reason="hangup"))
    await provider.wait_closed("First call.")
    assert worker.status().turns == [TurnsInFlight("c2", [1])]
    await worker.stop()


async def test_stop_closes_unfinished_sentences_with_an_error(worker_bus: Bus, probe: Probe) -> None:
    provider = GatedProvider()
    worker = await make_worker(worker_bus, provider)
    await probe.publish(subjects.TTS_SYNTHESIZE, say("Cut short.", last=True))
    await provider.wait_started("Cut short.")
    provider.queue.put_nowait(b"\x7f" * 300)
    await worker.stop()
    await probe.caught_up(worker_bus)
    [frame] = frames(probe)
    assert frame.flags == EOS | EOT
    [error] = events(probe)
    assert isinstance(error, TtsError) and "stopped" in error.message
    assert not worker.ready()


async def test_a_worker_at_capacity_leaves_the_queue_and_the_next_sentence_goes_to_one_with_room(
    worker_bus: Bus, probe: Probe, nats_server: NatsServer
) -> None:
    """Admission control: with room for one sentence, a worker busy with one is out of the
    tts queue group, so NATS hands the next sentence to a worker with room; once its
    sentence is done it is back (failed before: the full worker stayed in the queue)."""
    busy_provider, spare_provider = GatedProvider(), GatedProvider()
    busy = await make_worker(worker_bus, busy_provider, tts_max_sentences=1)

    async def in_queue() -> bool:
        return subjects.TTS_SYNTHESIZE in await nats_server.subscriptions(worker_bus)

    await probe.publish(subjects.TTS_SYNTHESIZE, say("First sentence.", seq=0))
    await busy_provider.wait_started("First sentence.")
    await until(in_queue, False)
    assert not busy.status().in_queue and busy.status().capacity == 1
    spare_bus = Bus("spare-tts")
    await spare_bus.connect(nats_server.url)
    spare = await make_worker(spare_bus, spare_provider, tts_max_sentences=1)
    try:
        await probe.publish(subjects.TTS_SYNTHESIZE, say("Second sentence.", seq=1))
        await spare_provider.wait_started("Second sentence.")
        assert "Second sentence." not in busy_provider.started
        busy_provider.queue.put_nowait(None)  # the first sentence ends: room again
        await until(in_queue, True)
        assert busy.status().in_queue
    finally:
        spare_provider.queue.put_nowait(None)
        await spare.stop()
        await spare_bus.close()
        await busy.stop()


async def until(check: Callable[[], Awaitable[bool]], want: bool) -> None:
    for _ in range(200):  # the seat changes in a task of its own, after the request was taken
        if await check() == want:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the work subscription never became {want}")
