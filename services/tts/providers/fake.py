"""Fake TTS: speech-like audio of a realistic length, streamed faster than real time.

Each word is a voiced tone between 180 and 260 Hz (picked from the word itself, so the
same text always sounds the same) with a syllable-rate envelope, which is enough for the
simulated caller's voice detector and for ears in the web console. Two hundred calls
share two cores, so the waveforms are computed once and every sentence is only slices
of them joined together.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import AsyncIterator

from voxline.audio import TELEPHONY_RATE, pcm16_to_mulaw, tone_pcm16
from voxline.config import TtsSettings

PITCHES_HZ = (180, 200, 220, 240, 260)
PIECE_MS = 200  # audio per yielded piece ...
PIECE_INTERVAL_S = 0.01  # ... and the wall time between pieces: 20x real time
_WORD = re.compile(r"\S+\s*")

# One second per pitch: whole periods of the tone and of its 4 Hz envelope, so a word
# longer than a second loops it without a click.
_WAVES = {hz: pcm16_to_mulaw(tone_pcm16(1000, freq=hz)) for hz in PITCHES_HZ}


def fake_speech(text: str, ms_per_char: float) -> bytes:
    """`len(text) * ms_per_char` of audio, each word on its own pitch."""
    bytes_per_char = ms_per_char * TELEPHONY_RATE / 1000
    parts: list[bytes] = []
    start = 0
    for match in _WORD.finditer(text):
        end = match.end()
        size = round(end * bytes_per_char) - round(start * bytes_per_char)
        start = end
        wave = _WAVES[PITCHES_HZ[zlib.crc32(match.group().strip().lower().encode()) % len(PITCHES_HZ)]]
        parts.append((wave * (size // len(wave) + 1))[:size])
    return b"".join(parts)


class FakeTtsProvider:
    name = "fake"

    def __init__(self, settings: TtsSettings) -> None:
        self.ttfb_s = settings.fake_ttfb_ms / 1000
        self.ms_per_char = settings.fake_ms_per_char

    async def synthesize(self, text: str, voice: str) -> AsyncIterator[bytes]:
        audio = fake_speech(text, self.ms_per_char)
        piece = TELEPHONY_RATE * PIECE_MS // 1000
        await asyncio.sleep(self.ttfb_s)
        for offset in range(0, len(audio), piece):
            if offset:
                await asyncio.sleep(PIECE_INTERVAL_S)
            yield audio[offset : offset + piece]

    async def load(self) -> None:
        pass  # nothing to load

    async def close(self) -> None:
        pass
