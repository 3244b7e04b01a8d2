"""The caller's voice: text through Piper or espeak-ng, WAV files, or raw 8 kHz PCM.

Two voices for text. `espeak` (this module's default, cheap, in every test and benchmark)
is robotic and Whisper tiny.en mishears a good part of it over 8 kHz mu-law; `piper` (the
bundled en_US-joe-medium voice, the default of `voxline call`) sounds like a person, so a
call against the offline stack shows what a real caller would get recognised.

Audio is prepared before the call starts so synthesis time never leaks into the
latencies being measured. Without espeak-ng the caller still needs something that a
voice activity detector takes for speech, so a modulated tone of plausible length
stands in (the agent will not understand it, but the timing paths are exercised).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import tempfile
import wave
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from voxline.audio import (
    FRAME_SAMPLES,
    MULAW_SILENCE,
    TELEPHONY_RATE,
    float_to_pcm16,
    pcm16_to_mulaw,
    resample,
    rms_dbfs,
    tone_pcm16,
)
from voxline.models import piper_voice_paths

FALLBACK_MS_PER_CHAR = 70.0
VOICED_DBFS = -45.0  # frames louder than this count as speech for onset/end timing

CALLER_VOICES = ("espeak", "piper")

_warned_no_espeak = False
_voice_cache: dict[str, np.ndarray] = {}
_voice = "espeak"
_piper: Any = None


def use_voice(name: str) -> None:
    """Pick the voice `synthesize` speaks text with, for this process."""
    global _voice
    if name not in CALLER_VOICES:
        raise ValueError(f"unknown caller voice {name!r}; choose one of {', '.join(CALLER_VOICES)}")
    _voice = name


def read_wav(path: Path) -> np.ndarray:
    """Any PCM WAV (8/16/24/32-bit, any rate, any channel count) as 8 kHz mono int16."""
    with wave.open(str(path), "rb") as wav:
        width = wav.getsampwidth()
        channels = wav.getnchannels()
        rate = wav.getframerate()
        raw = wav.readframes(wav.getnframes())
    if width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        ints = np.where(ints & 0x800000, ints - 0x1000000, ints)
        data = ints.astype(np.float32) / 8388608.0
    elif width == 4:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
    else:
        raise ValueError(f"{path}: unsupported sample width {width}")
    if channels > 1:
        data = data[: len(data) - len(data) % channels].reshape(-1, channels).mean(axis=1)
    return float_to_pcm16(resample(data.astype(np.float32), rate, TELEPHONY_RATE))


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def _piper_pcm(text: str) -> np.ndarray:
    global _piper
    if _piper is None:
        from piper import PiperVoice

        model, config = piper_voice_paths()
        _piper = PiperVoice.load(model, config_path=config)
    chunks = list(_piper.synthesize(text))
    if not chunks:
        return np.zeros(0, np.int16)
    audio = np.concatenate([c.audio_int16_array for c in chunks]).astype(np.float32) / 32768.0
    return float_to_pcm16(resample(audio, chunks[0].sample_rate, TELEPHONY_RATE))


def synthesize(text: str) -> np.ndarray:
    """Speak `text` as 8 kHz int16 in the chosen voice; espeak-ng if present, else a
    speech-like tone."""
    global _warned_no_espeak
    key = f"{_voice}:{text}"
    if key in _voice_cache:
        return _voice_cache[key]
    if _voice == "piper":
        _voice_cache[key] = pcm = _piper_pcm(text)
        return pcm
    if not espeak_available():
        if not _warned_no_espeak:
            print("simulator: espeak-ng not found, the caller speaks a tone instead", file=sys.stderr)
            _warned_no_espeak = True
        return tone_pcm16(FALLBACK_MS_PER_CHAR * max(1, len(text)))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "say.wav"
        # "--" keeps text that starts with "-" from being read as an option.
        subprocess.run(["espeak-ng", "-w", str(out), "--", text], check=True, capture_output=True)
        pcm = read_wav(out)
    _voice_cache[key] = pcm
    return pcm


def as_pcm16(samples: np.ndarray) -> np.ndarray:
    """Accept int16 or float audio from callers of the API."""
    if np.issubdtype(samples.dtype, np.floating):
        return float_to_pcm16(samples.ravel())
    return samples.astype(np.int16).ravel()


@dataclass(frozen=True)
class SpeechFrames:
    """Utterance audio cut into 20 ms mu-law frames, with which frames carry voice."""

    frames: list[bytes]
    voiced: list[bool]

    @property
    def duration_ms(self) -> int:
        return len(self.frames) * 20

    @cached_property
    def frames_b64(self) -> list[str]:
        """Base64 of each frame, computed once: the send loop must not encode per frame."""
        return [base64.b64encode(f).decode("ascii") for f in self.frames]

    @classmethod
    def from_pcm(cls, pcm: np.ndarray) -> SpeechFrames:
        pcm = as_pcm16(pcm)
        pad = (-len(pcm)) % FRAME_SAMPLES
        frames: list[bytes] = []
        voiced: list[bool] = []
        for i in range(0, len(pcm), FRAME_SAMPLES):
            block = pcm[i : i + FRAME_SAMPLES]
            voiced.append(rms_dbfs(block) > VOICED_DBFS)
            data = pcm16_to_mulaw(block)
            if len(data) < FRAME_SAMPLES:
                data += bytes([MULAW_SILENCE]) * pad
            frames.append(data)
        return cls(frames, voiced)
