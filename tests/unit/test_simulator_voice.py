"""Caller audio sources: WAV in any common shape, espeak-ng, and the tone fallback."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from voxline.audio import MULAW_SILENCE, tone_pcm16
from voxline.simulator import voice
from voxline.simulator.voice import SpeechFrames, read_wav


def write_wav(path: Path, data: bytes, rate: int, channels: int, width: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)


def test_stereo_16k_wav_becomes_8k_mono(tmp_path: Path) -> None:
    left = tone_pcm16(500, rate=16000)
    stereo = np.stack([left, left], axis=1).astype("<i2")
    write_wav(tmp_path / "s.wav", stereo.tobytes(), 16000, 2, 2)
    pcm = read_wav(tmp_path / "s.wav")
    assert pcm.dtype == np.int16
    assert abs(len(pcm) - 4000) <= 2
    assert np.abs(pcm).max() > 3000


def test_8bit_wav_is_centred(tmp_path: Path) -> None:
    write_wav(tmp_path / "u8.wav", bytes([128]) * 800, 8000, 1, 1)
    pcm = read_wav(tmp_path / "u8.wav")
    assert len(pcm) == 800 and np.abs(pcm).max() == 0


def test_frames_are_padded_with_silence_and_flag_voice() -> None:
    pcm = np.concatenate([np.zeros(320, np.int16), tone_pcm16(100), np.zeros(100, np.int16)])
    frames = SpeechFrames.from_pcm(pcm)
    assert all(len(f) == 160 for f in frames.frames)
    assert len(frames.frames) == 8  # 320 + 800 + 100 samples -> 7.6 frames, padded
    assert frames.voiced[:2] == [False, False] and all(frames.voiced[2:7])
    assert frames.frames[-1].endswith(bytes([MULAW_SILENCE]) * 60)


def test_float_pcm_is_accepted() -> None:
    frames = SpeechFrames.from_pcm(np.full(160, 0.5, dtype=np.float32))
    assert frames.voiced == [True]


def test_without_espeak_a_tone_of_plausible_length_stands_in(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(voice, "espeak_available", lambda: False)
    monkeypatch.setattr(voice, "_warned_no_espeak", False)
    pcm = voice.synthesize("ten chars!")
    voice.synthesize("again")
    assert len(pcm) == 8 * 700
    assert capsys.readouterr().err.count("espeak-ng not found") == 1


@pytest.mark.skipif(not voice.espeak_available(), reason="espeak-ng not installed")
def test_espeak_speech_is_8k_and_voiced() -> None:
    frames = SpeechFrames.from_pcm(voice.synthesize("Hello, what time do you open?"))
    assert 500 < frames.duration_ms < 5000
    assert sum(frames.voiced) > len(frames.voiced) // 3


def test_piper_voice_speaks_a_sentence_at_8k_and_espeak_stays_the_default() -> None:
    text = "What time do you open on Saturday?"
    assert voice._voice == "espeak"
    voice.use_voice("piper")
    try:
        pcm = voice.synthesize(text)
    finally:
        voice.use_voice("espeak")
    assert pcm.dtype == np.int16
    assert 1.0 < len(pcm) / 8000 < 4.0  # a short question, seconds of 8 kHz audio
    frames = SpeechFrames.from_pcm(pcm)
    assert sum(frames.voiced) > len(frames.voiced) / 2  # mostly voice, not silence
    assert voice.synthesize(text) is not pcm  # the espeak rendering is cached apart


def test_unknown_caller_voice_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown caller voice"):
        voice.use_voice("robot")
