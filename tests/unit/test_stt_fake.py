"""The fake STT session: energy-based speech detection and scripted transcripts."""

from __future__ import annotations

import asyncio

import pytest

from proto.audio_frame import AudioFrame
from proto.messages import Message, SpeechEnded, SpeechStarted, SttAssign, Transcript
from services.stt.providers import make_provider
from services.stt.providers.fake import FakeSttSession
from voxline.audio import FRAME_SAMPLES, pcm16_to_mulaw, silence_mulaw, tone_pcm16
from voxline.config import SttSettings

_TONE = pcm16_to_mulaw(tone_pcm16(2000, freq=220.0))


def silence(frames: int) -> list[AudioFrame]:
    return [AudioFrame(silence_mulaw(20), seq=i) for i in range(frames)]


def tone(frames: int) -> list[AudioFrame]:
    step = FRAME_SAMPLES
    return [AudioFrame(_TONE[i * step : (i + 1) * step], seq=i) for i in range(frames)]


class Collector:
    """The emit callback: records events and signals each final transcript."""

    def __init__(self) -> None:
        self.events: list[Message] = []
        self.final = asyncio.Event()

    async def __call__(self, event: Message) -> None:
        self.events.append(event)
        if isinstance(event, Transcript) and event.is_final:
            self.final.set()

    async def next_final(self) -> Transcript:
        await asyncio.wait_for(self.final.wait(), timeout=5)
        self.final.clear()
        return [e for e in self.events if isinstance(e, Transcript) and e.is_final][-1]

    def kinds(self) -> list[str]:
        out = []
        for e in self.events:
            if isinstance(e, Transcript):
                out.append("final" if e.is_final else "partial")
            else:
                out.append(type(e).__name__)
        return out


def settings(**overrides: object) -> SttSettings:
    values: dict[str, object] = {"fake_stt_latency_ms": 0, "fake_end_silence_ms": 300, "fake_transcripts": ""}
    values.update(overrides)
    return SttSettings(**values)  # type: ignore[arg-type]


async def open_session(collector: Collector, script: str | None = None, **overrides: object) -> FakeSttSession:
    params = {"fake_transcripts": script} if script is not None else {}
    assign = SttAssign(call_id="c1", agent_id="demo", custom_parameters=params)
    session = await make_provider("fake", settings(**overrides)).open(assign, collector)
    assert isinstance(session, FakeSttSession)
    return session


async def feed(session: FakeSttSession, frames: list[AudioFrame]) -> None:
    for frame in frames:
        await session.feed(frame)


@pytest.mark.asyncio
async def test_utterance_yields_started_partial_ended_then_final() -> None:
    collector = Collector()
    session = await open_session(collector, "book a table for two")
    await feed(session, silence(10) + tone(25) + silence(20))
    final = await collector.next_final()

    assert collector.kinds() == ["SpeechStarted", "partial", "SpeechEnded", "final"]
    started, partial, ended = collector.events[:3]
    assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
    assert isinstance(partial, Transcript) and partial.text == "book"
    assert final.text == "book a table for two" and final.call_id == "c1"
    assert started.at_us < ended.speech_end_us
    await session.close()


@pytest.mark.asyncio
async def test_script_is_used_in_order_and_cycles() -> None:
    collector = Collector()
    session = await open_session(collector, "one | two")
    texts = []
    for _ in range(3):
        await feed(session, tone(15) + silence(16))
        texts.append((await collector.next_final()).text)
    assert texts == ["one", "two", "one"]
    await session.close()


@pytest.mark.asyncio
async def test_settings_script_then_default() -> None:
    collector = Collector()
    session = await open_session(collector, fake_transcripts="from settings")
    await feed(session, tone(5) + silence(16))
    assert (await collector.next_final()).text == "from settings"
    await session.close()

    collector = Collector()
    session = await open_session(collector)
    await feed(session, tone(5) + silence(16))
    assert (await collector.next_final()).text == "hello"
    await session.close()


@pytest.mark.asyncio
async def test_single_frame_blips_are_ignored() -> None:
    collector = Collector()
    session = await open_session(collector)
    await feed(session, silence(5) + tone(1) + silence(3) + tone(1) + silence(20))
    assert collector.events == []
    await session.close()


@pytest.mark.asyncio
async def test_short_pause_inside_speech_keeps_one_utterance() -> None:
    collector = Collector()
    session = await open_session(collector, "first|second")
    await feed(session, tone(10) + silence(5) + tone(10) + silence(16))
    assert (await collector.next_final()).text == "first"
    assert collector.kinds().count("SpeechStarted") == 1
    assert collector.kinds().count("SpeechEnded") == 1
    await session.close()


@pytest.mark.asyncio
async def test_no_partial_for_speech_shorter_than_200_ms() -> None:
    collector = Collector()
    session = await open_session(collector)
    await feed(session, tone(5) + silence(16))
    await collector.next_final()
    assert collector.kinds() == ["SpeechStarted", "SpeechEnded", "final"]
    await session.close()


@pytest.mark.asyncio
async def test_close_drops_a_pending_final_and_later_audio() -> None:
    collector = Collector()
    session = await open_session(collector, fake_stt_latency_ms=60_000)
    await feed(session, tone(5) + silence(16))
    await session.close()
    await feed(session, tone(20) + silence(20))
    assert collector.kinds() == ["SpeechStarted", "SpeechEnded"]


@pytest.mark.asyncio
async def test_odd_frame_lengths_count_by_duration() -> None:
    collector = Collector()
    session = await open_session(collector, fake_end_silence_ms=300)
    # 40 ms frames: 300 ms of silence is 8 of them, not 15.
    long_silence = [AudioFrame(silence_mulaw(40)) for _ in range(8)]
    long_tone = [AudioFrame(_TONE[i * 320 : (i + 1) * 320]) for i in range(4)]
    await feed(session, long_tone + long_silence)
    await collector.next_final()
    assert collector.kinds()[-2:] == ["SpeechEnded", "final"]
    await session.close()
