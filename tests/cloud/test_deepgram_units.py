"""The Deepgram provider's bookkeeping, and one session against the emulator in-process.

Frames carry synthetic arrival times here, so the mapping of Deepgram's audio time back to
the wall clock can be checked exactly, also across a reconnect that replays audio.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlencode

import numpy as np
import pytest
from pydantic import SecretStr

from proto.audio_frame import AudioFrame
from proto.messages import Message, SpeechEnded, SpeechPaused, SpeechStarted, SttAssign, SttError, Transcript
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
    emulator.transcripts, emulator.speech_final, emulator.answer_finalize = ["yes please"], False, False
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


def noise_mulaw(ms: int, dbfs: float = -30.0) -> bytes:
    """White noise (a crackle on the line): loud, but nothing like a voice."""
    rng = np.random.default_rng(7)
    level = 32767 * 10 ** (dbfs / 20)
    return pcm16_to_mulaw(np.clip(rng.standard_normal(8 * ms) * level, -32767, 32767).astype(np.int16))


def faint_tone_mulaw(ms: int) -> bytes:
    """A voice-like sound under the line's voice level (-40 dBFS), over Deepgram's VAD's: echo."""
    return pcm16_to_mulaw(tone_pcm16(ms, level=0.008))


class Session:
    """One session fed by hand, so a test can stop between pieces of audio."""

    def __init__(self, emulator: DeepgramEmulator, **overrides: object) -> None:
        self.emulator, self.overrides = emulator, overrides
        self.events: list[Message] = []
        self.offset = 0
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Session:
        async def emit(event: Message) -> None:
            self.events.append(event)
            self._changed.set()

        provider = DeepgramSttProvider(settings(self.emulator, **self.overrides))
        self.session = await provider.open(SttAssign(call_id="c3", agent_id="demo", pause_ms=200), emit)
        deadline = asyncio.get_running_loop().time() + 5
        while not (self.emulator.connections and self.emulator.connections[-1].audio_bytes):
            assert asyncio.get_running_loop().time() < deadline, "no connection within 5 s"
            await self.feed(silence_mulaw(20))  # live from here on: what follows is in order
            await asyncio.sleep(0.01)  # polls what the emulator observed
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.session.close()

    async def feed(self, audio: bytes) -> None:
        for i in range(0, len(audio), FRAME):
            await self.session.feed(AudioFrame(audio[i : i + FRAME], timestamp_us=T0 + self.offset * 125))
            self.offset += FRAME

    async def until(self, what: Callable[[Message], bool]) -> Message:
        while True:
            found = next((e for e in self.events if what(e)), None)
            if found is not None:
                return found
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), 10)

    def kinds(self) -> list[str]:
        """The events but partial transcripts (which come about once a second of speech)."""
        shown = [e for e in self.events if not (isinstance(e, Transcript) and not e.is_final)]
        return [type(e).__name__ + (f"({e.text!r})" if isinstance(e, Transcript | SpeechPaused) else "") for e in shown]

    def wall_us(self, ms: float) -> int:
        """Wall clock of the moment `ms` after the end of the audio fed so far."""
        return T0 - 20_000 + (self.offset // 8 + round(ms)) * 1000


async def test_noise_onset_without_words_ends_as_noise(emulator: DeepgramEmulator) -> None:
    """Deepgram's SpeechStarted on a crackle, and no words: the session must not stay in
    speech (the orchestrator would take it for an interruption)."""
    emulator.transcripts = ["what are your opening hours"]
    async with Session(emulator) as s:
        await s.feed(silence_mulaw(300) + noise_mulaw(300) + silence_mulaw(100))
        await s.until(lambda e: isinstance(e, SpeechStarted))  # Deepgram's onset, confirmed by the line
        await s.feed(silence_mulaw(300))
        await s.until(is_final)
        assert s.kinds() == ["SpeechStarted", "SpeechEnded", "Transcript('')"]
        assert emulator.connections[0].finalizes == 1 and emulator.finals == []
        # The next real utterance is heard as usual, with its own onset.
        onset = s.wall_us(0)
        await s.feed(pcm16_to_mulaw(tone_pcm16(1000)) + silence_mulaw(400))
        await s.until(lambda e: is_final(e) and e.text != "")
        assert s.kinds()[3:] == ["SpeechStarted", "SpeechEnded", "Transcript('what are your opening hours')"]
        assert [e.at_us for e in s.events if isinstance(e, SpeechStarted)][1] == onset


async def test_onset_the_line_does_not_show_is_held(emulator: DeepgramEmulator) -> None:
    """Faint echo trips Deepgram's VAD but is no voice on the line: no SpeechStarted (it
    would stop the agent), and a real utterance after it is reported from its own onset."""
    emulator.transcripts = ["stop please"]
    async with Session(emulator) as s:
        onset = s.wall_us(200 + 1200 + 400)
        await s.feed(silence_mulaw(200) + faint_tone_mulaw(1200) + silence_mulaw(400))
        await s.feed(pcm16_to_mulaw(tone_pcm16(800)) + silence_mulaw(400))
        await s.until(is_final)
        assert s.kinds() == ["SpeechStarted", "SpeechEnded", "Transcript('stop please')"]
        assert s.events[0].at_us == onset
        assert len([c for c in emulator.connections if c.finalizes]) == 1


async def test_pause_finalizes_and_the_answer_is_a_pause_not_the_end(emulator: DeepgramEmulator) -> None:
    """Interims come once a second, so the words at a pause come from our Finalize; its
    answer (from_finalize) starts a preemptive reply but does not end the utterance: the
    caller may go on, and the final then holds both pieces."""
    emulator.transcripts = ["I need to cancel", "my appointment"]
    async with Session(emulator) as s:
        quiet_from = s.wall_us(200 + 800)
        await s.feed(silence_mulaw(200) + pcm16_to_mulaw(tone_pcm16(800)) + silence_mulaw(100))
        paused = await s.until(lambda e: isinstance(e, SpeechPaused))
        assert isinstance(paused, SpeechPaused) and paused.text == "I need to cancel"
        assert emulator.finals[-1].from_finalize and emulator.finals[-1].text == "I need to cancel"
        assert paused.speech_end_us == quiet_from  # where the quiet began
        await s.feed(pcm16_to_mulaw(tone_pcm16(600)) + silence_mulaw(400))
        await s.until(is_final)
        assert s.kinds() == [
            "SpeechStarted",
            "SpeechPaused('I need to cancel')",
            "SpeechStarted",  # the caller went on: the preemptive reply is stale
            "SpeechEnded",
            "Transcript('I need to cancel my appointment')",
        ]
        assert emulator.connections[0].finalizes == 2


async def test_quiet_for_the_endpointing_time_after_the_answer_ends_the_utterance(emulator: DeepgramEmulator) -> None:
    emulator.transcripts = ["what are your opening hours"]
    emulator.speech_final = False  # Deepgram's own endpoint would not end it
    async with Session(emulator, utterance_end_ms=5000) as s:
        speech_end = s.wall_us(200 + 1200)
        await s.feed(silence_mulaw(200) + pcm16_to_mulaw(tone_pcm16(1200)) + silence_mulaw(300))
        final = await s.until(is_final)
        assert final.text == "what are your opening hours"
        ended = next(e for e in s.events if isinstance(e, SpeechEnded))
        assert ended.speech_end_us == speech_end
        assert ended.at_us - ended.speech_end_us == 200_000  # the endpointing silence (pause_ms)
