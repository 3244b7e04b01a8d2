"""OpenAI TTS audio: 24 kHz PCM pieces of any size become (to within rounding) the same
8 kHz mu-law as the whole sentence converted at once, so network chunking never changes
what callers hear."""

from __future__ import annotations

import numpy as np

from services.tts.providers.openai_tts import PcmToMulaw
from voxline.audio import mulaw_to_pcm16, resample, rms_dbfs, tone_pcm16


def convert_in_pieces(pcm: bytes, sizes: list[int]) -> bytes:
    converter = PcmToMulaw()
    out, offset, i = [], 0, 0
    while offset < len(pcm):
        size = sizes[i % len(sizes)]
        out.append(converter.push(pcm[offset : offset + size]))
        offset, i = offset + size, i + 1
    out.append(converter.finish())
    return b"".join(out)


def test_piecewise_conversion_matches_one_shot_and_keeps_length() -> None:
    tone = tone_pcm16(500, freq=300, rate=24_000)
    pcm = tone.astype("<i2").tobytes()
    whole = convert_in_pieces(pcm, [len(pcm)])
    odd_pieces = convert_in_pieces(pcm, [1, 4799, 333, 2, 1001])  # odd sizes split samples in two
    assert len(whole) == len(odd_pieces) == 4000  # 500 ms at 8 kHz, one byte per sample
    # soxr rounds a little differently per block: at most one mu-law step apart, on a few samples.
    difference = mulaw_to_pcm16(whole).astype(np.int32) - mulaw_to_pcm16(odd_pieces).astype(np.int32)
    assert np.abs(difference).max() <= 256 and np.count_nonzero(difference) < len(whole) // 20


def test_converted_audio_is_the_same_signal() -> None:
    tone = tone_pcm16(400, freq=440, rate=24_000)
    mulaw = convert_in_pieces(tone.astype("<i2").tobytes(), [960])
    decoded = mulaw_to_pcm16(mulaw).astype(np.float64)
    reference = resample(tone, 24_000, 8_000).astype(np.float64)
    error = decoded[200:-200] - reference[200:-200]  # edges differ by the filter's run-in
    assert rms_dbfs(error.astype(np.int16)) < rms_dbfs(reference.astype(np.int16)) - 30


def test_empty_and_tiny_pieces_yield_nothing_until_there_is_audio() -> None:
    converter = PcmToMulaw()
    assert converter.push(b"") == b""
    assert converter.push(b"\x01") == b""  # half a sample waits for its other byte
    assert converter.finish() == b""
