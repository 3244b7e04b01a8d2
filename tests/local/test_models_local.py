"""Each local model on its own, with real speech: a human recording through the STT
provider, and Piper's voice back through Whisper."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from proto.audio_frame import AudioFrame
from proto.messages import Message, SpeechEnded, SpeechStarted, SttAssign, Transcript
from services.stt.providers.local import LocalSttProvider
from services.tts.providers.piper import PiperTtsProvider
from tests.local.conftest import speak
from voxline.audio import FRAME_SAMPLES, pcm16_to_float, pcm16_to_mulaw, silence_mulaw
from voxline.simulator.voice import read_wav

pytestmark = pytest.mark.asyncio(loop_scope="session")


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+|[0-9]+", text.lower()))


async def test_human_recording_is_segmented_and_transcribed(whisper: LocalSttProvider) -> None:
    """Samuel Beckett's "Ever tried. Ever failed. ..." read by a person (moonshine-voice's
    test asset), sent as a caller would: 20 ms mu-law frames at 8 kHz."""
    wav = resources.files("moonshine_voice").joinpath("assets", "beckett.wav")
    audio = silence_mulaw(300) + pcm16_to_mulaw(read_wav(wav)) + silence_mulaw(1000)  # type: ignore[arg-type]
    events: list[Message] = []

    async def emit(message: Message) -> None:
        events.append(message)

    session = await whisper.open(SttAssign(call_id="beckett", agent_id="demo"), emit)
    for i in range(0, len(audio), FRAME_SAMPLES):
        await session.feed(AudioFrame(audio[i : i + FRAME_SAMPLES]))
    for task in list(session._finals):
        await task
    await session.close()

    finals = [e for e in events if isinstance(e, Transcript)]
    assert finals and all(f.is_final and f.provider_ms > 0 for f in finals)
    assert not any(isinstance(e, Transcript) and not e.is_final for e in events)  # no partials, by design
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    ends = [e for e in events if isinstance(e, SpeechEnded)]
    assert len(starts) == len(ends) == len(finals) >= 2  # the reader's pauses split the utterances
    heard = words(" ".join(f.text for f in finals))
    assert {"ever", "tried", "failed", "matter", "try", "again", "fail", "better"} <= heard, heard


async def test_piper_voice_is_understood_after_the_phone_line(
    piper: PiperTtsProvider, whisper: LocalSttProvider
) -> None:
    pcm = await speak(piper, "We open at 9 a.m. on Saturday, and we accept Cigna.")
    assert 2.0 < len(pcm) / 8000 < 6.0
    text = await whisper.transcribe(pcm16_to_float(pcm), "Glossary: Cigna.")
    heard = words(text[0])  # Piper samples its prosody, so "open" is sometimes "opened"
    assert {"9", "saturday", "cigna"} <= heard and any(w.startswith("open") for w in heard), text
