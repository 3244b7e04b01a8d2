"""The Deepgram provider's bookkeeping, and one session against the emulator in-process.

Frames carry synthetic arrival times here, so the mapping of Deepgram's audio time back to
the wall clock can be checked exactly, also across a reconnect that replays audio.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
from pydantic import SecretStr

from proto.audio_frame import AudioFrame
from proto.messages import Message, SpeechEnded, SpeechStarted, SttAssign, SttError, Transcript
from services.stt.providers.deepgram import DeepgramSttProvider
from services.stt.providers.deepgram_ledger import BYTES_PER_S, AudioLedger, seconds_to_offset
from tests.emulators.deepgram import ConnectionLog, DeepgramEmulator
from voxline.audio import pcm16_to_mulaw, silence_mulaw, tone_pcm16
from voxline.config import DeepgramSettings, SttSettings

FRAME = 160  # 20 ms
T0 = 1_700_000_000_000_000  # wall clock (us) of the end of the first frame


def ledger_with(frames: int, max_unacked_s: float = 30.0) -> AudioLedger:
    ledger = AudioLedger(max_unacked_s)
    for i in range(frames):
        ledger.append(bytes([i % 256]) * FRAME, T0 + i * 20_000)
    return ledger


def test_audio_time_maps_to_the_arrival_of_the_frame_that_holds_it() -> None:
    ledger = ledger_with(10)
    assert ledger.wall_us(FRAME) == T0  # end of frame 0 = its arrival
    assert ledger.wall_us(0) == T0 - 20_000
    assert ledger.wall_us(FRAME + 80) == T0 + 10_000  # half-way through frame 1
    assert ledger.wall_us(seconds_to_offset(0.2)) == T0 + 9 * 20_000  # end of the last frame


def test_mapping_follows_irregular_arrivals() -> None:
    ledger = AudioLedger()
    ledger.append(b"\xff" * FRAME, T0)
    ledger.append(b"\xff" * FRAME, T0 + 500_000)  # a late frame (network hiccup)
    assert ledger.wall_us(2 * FRAME) == T0 + 500_000
    assert ledger.wall_us(FRAME) == T0


def test_ack_trims_what_deepgram_finalized_and_replay_starts_after_it() -> None:
    ledger = ledger_with(10)
    assert ledger.replay_start() == 0 and ledger.unacked_bytes == 10 * FRAME
    ledger.ack(3 * FRAME + 40)  # mid-frame: the rest of that frame is still owed
    assert ledger.replay_start() == 3 * FRAME + 40
    replay = ledger.read(ledger.replay_start(), 10_000)
    assert len(replay) == 7 * FRAME - 40
    assert replay[:120] == bytes([3]) * 120 and replay[120:].startswith(bytes([4]) * FRAME)
    assert ledger.read(ledger.replay_start(), 100) == bytes([3]) * 100
    ledger.ack(10 * FRAME)
    assert ledger.unacked_bytes == 0 and ledger.read(ledger.replay_start(), 100) == b""
    assert ledger.wall_us(FRAME) == T0  # mapping outlives the acknowledgement


def test_unacknowledged_audio_is_capped_oldest_first() -> None:
    ledger = ledger_with(100, max_unacked_s=1.0)  # 2 s fed, 1 s kept
    assert ledger.unacked_bytes <= BYTES_PER_S
    assert ledger.dropped == 100 * FRAME - ledger.unacked_bytes
    assert ledger.read(ledger.replay_start(), FRAME) == bytes([100 - ledger.unacked_bytes // FRAME]) * FRAME


def settings(emulator: DeepgramEmulator, **overrides: Any) -> SttSettings:
    """Deepgram settings pointed at the emulator; `overrides` are DeepgramSettings fields."""
    values: dict[str, Any] = {"api_key": SecretStr(emulator.api_key), "url": emulator.url, "stall_timeout_s": 1.0}
    return SttSettings(deepgram=DeepgramSettings(**{**values, **overrides}))


def test_keywords_go_out_as_keyterm_for_nova3_and_single_words_for_nova2() -> None:
    """Nova-3's keyterm boosts phrases; Nova-2's keywords are single words, so a phrase
    is split into its words (each once): https://developers.deepgram.com/docs/keywords"""
    emulator = DeepgramEmulator()
    keywords = ["Bright Smile", " ", "Aetna", "Smile", "Delta  Dental"]
    assign = SttAssign(call_id="c", agent_id="demo", keywords=keywords)
    nova3 = DeepgramSttProvider(settings(emulator)).connect_params(assign)
    nova2 = DeepgramSttProvider(settings(emulator, model="nova-2")).connect_params(assign)
    assert nova3["keyterm"] == ["Bright Smile", "Aetna", "Smile", "Delta  Dental"] and "keywords" not in nova3
    assert nova2["keywords"] == ["Bright", "Smile", "Aetna", "Delta", "Dental"] and "keyterm" not in nova2
    assert nova3["encoding"] == "mulaw" and nova3["sample_rate"] == 8000 and nova3["channels"] == 1
    assert nova3["endpointing"] == 300
    # What the emulator receives: every keyword one usable word.
    sent = ConnectionLog(0, parse_qs(urlencode(nova2, doseq=True)))
    assert sent.params["keywords"] == nova2["keywords"] and sent.unusable_keywords == []
    assert ConnectionLog(0, {"keywords": ["Bright Smile", "Aetna"]}).unusable_keywords == ["Bright Smile"]
    paused = SttAssign(call_id="c", agent_id="demo", pause_ms=180)
    assert DeepgramSttProvider(settings(emulator)).connect_params(paused)["endpointing"] == 180


@pytest.fixture
async def emulator() -> AsyncIterator[DeepgramEmulator]:
    em = DeepgramEmulator()
    await em.start()
    yield em
    await em.stop()


def is_final(event: Message) -> bool:
    return isinstance(event, Transcript) and event.is_final


async def run_session(
    emulator: DeepgramEmulator, audio: bytes, until: Callable[[Message], bool], **overrides: object
) -> list[Message]:
    """Feed `audio` as fast as it goes (the emulator counts audio time), then wait for `until`."""
    events: list[Message] = []
    done = asyncio.Event()

    async def emit(event: Message) -> None:
        events.append(event)
        if until(event):
            done.set()

    provider = DeepgramSttProvider(settings(emulator, **overrides))
    session = await provider.open(SttAssign(call_id="c1", agent_id="demo"), emit)
    for i in range(0, len(audio), FRAME):
        await session.feed(AudioFrame(audio[i : i + FRAME], timestamp_us=T0 + i * 125))  # 125 us per byte
    await asyncio.wait_for(done.wait(), 10)
    await session.close()
    return events


async def test_reconnect_replays_unacknowledged_audio_and_keeps_wall_clock(emulator: DeepgramEmulator) -> None:
    emulator.transcripts = ["what are your opening hours"]
    emulator.drop_after_speech_ms = 600
    audio = silence_mulaw(1500) + pcm16_to_mulaw(tone_pcm16(1200)) + silence_mulaw(1500)
    events = await run_session(emulator, audio, is_final)
    assert emulator.connections[0].dropped and len(emulator.connections) == 2
    assert [e.text for e in events if isinstance(e, Transcript) and e.is_final] == ["what are your opening hours"]
    assert len([e for e in events if isinstance(e, SpeechStarted)]) == 1  # the replayed onset is not news
    # The new connection heard the whole utterance (replay started before the onset) ...
    assert emulator.finals[-1].connection == 1 and emulator.finals[-1].speech_ms == 1200
    # ... and its audio times, offset by the replay start, map to the frames' arrival times.
    ended = next(e for e in events if isinstance(e, SpeechEnded))
    assert ended.speech_end_us == T0 - 20_000 + (1500 + 1200) * 1000
    onset = next(e for e in events if isinstance(e, SpeechStarted))
    assert onset.at_us == T0 - 20_000 + 1500 * 1000
    assert ended.at_us - ended.speech_end_us == 300_000  # confirmed by the endpointing silence


async def test_utterance_end_ends_the_turn_when_no_speech_final_comes(emulator: DeepgramEmulator) -> None:
    emulator.transcripts, emulator.speech_final = ["yes please"], False
    audio = silence_mulaw(300) + pcm16_to_mulaw(tone_pcm16(800)) + silence_mulaw(1500)
    events = await run_session(emulator, audio, is_final)
    assert [e.text for e in events if isinstance(e, Transcript) and e.is_final] == ["yes please"]
    ended = next(e for e in events if isinstance(e, SpeechEnded))
    assert ended.speech_end_us == T0 - 20_000 + (300 + 800) * 1000
    assert ended.at_us - ended.speech_end_us == 1_000_000  # confirmed by utterance_end_ms


async def test_keep_alive_while_no_audio_flows(emulator: DeepgramEmulator) -> None:
    async def ignore(_: Message) -> None:
        pass

    provider = DeepgramSttProvider(settings(emulator, keepalive_s=0.3))
    session = await provider.open(SttAssign(call_id="c2", agent_id="demo"), ignore)
    await session.feed(AudioFrame(silence_mulaw(20), timestamp_us=T0))
    deadline = asyncio.get_running_loop().time() + 5
    while not (emulator.connections and emulator.connections[0].keepalives >= 2):
        assert asyncio.get_running_loop().time() < deadline, "no KeepAlive within 5 s"
        await asyncio.sleep(0.05)  # polls what the emulator observed
    await session.close()


async def test_rejected_key_is_one_stt_error_and_never_retried(emulator: DeepgramEmulator) -> None:
    emulator.api_key = "the-right-key"
    wrong = {"api_key": SecretStr("a-wrong-key-123")}
    events = await run_session(emulator, silence_mulaw(200), lambda e: isinstance(e, SttError), **wrong)
    errors = [e for e in events if isinstance(e, SttError)]
    assert len(errors) == 1 and "401" in errors[0].message and "a-wrong-key-123" not in errors[0].message
    assert emulator.rejected == [401]
