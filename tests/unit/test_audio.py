"""G.711 mu-law and resampling, checked against the standard's fixed points."""

from __future__ import annotations

import numpy as np
import pytest

from voxline import audio


@pytest.mark.parametrize(
    ("pcm", "code"), [(0, 0xFF), (-1, 0x7E), (32767, 0x80), (-32768, 0x00), (8031, 0xA0), (-8031, 0x20)]
)
def test_encode_matches_g711_reference_points(pcm: int, code: int) -> None:
    assert audio.pcm16_to_mulaw(np.array([pcm], dtype=np.int16)) == bytes([code])


def test_decode_table_endpoints_and_round_trip_error() -> None:
    assert audio.mulaw_to_pcm16(bytes([0xFF, 0x7F, 0x80, 0x00])).tolist() == [0, 0, 32124, -32124]
    x = np.linspace(-30000, 30000, 4001).astype(np.int16)
    y = audio.mulaw_to_pcm16(audio.pcm16_to_mulaw(x)).astype(np.int32)
    # mu-law keeps the relative error within one quantisation step (~3 %, more near zero).
    assert np.all(np.abs(y - x) <= np.maximum(np.abs(x.astype(np.int32)) * 0.035, 16))


def test_every_code_decodes_and_re_encodes_to_itself() -> None:
    codes = bytes(c for c in range(256) if c != 0x7F)  # 0x7F and 0xFF both mean zero
    assert audio.pcm16_to_mulaw(audio.mulaw_to_pcm16(codes)) == codes


def test_resample_keeps_duration_and_dtype() -> None:
    tone = audio.tone_pcm16(1000, rate=22050)
    out = audio.resample(tone, 22050, 8000)
    assert out.dtype == np.int16 and abs(len(out) - 8000) <= 2


def test_levels() -> None:
    assert audio.rms_dbfs(np.zeros(160, dtype=np.int16)) == -100.0
    assert -20 < audio.rms_dbfs(audio.tone_pcm16(200)) < -10
    assert audio.silence_mulaw(20) == b"\xff" * 160
