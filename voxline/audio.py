"""Audio codecs for the telephone edge: G.711 mu-law <-> 16-bit PCM, resampling, levels.

Twilio Media Streams carry 8 kHz mono mu-law; local models want 16 kHz (Whisper) or emit
22.05 kHz (Piper). Conversion is table-driven with numpy and resampling is delegated to
`soxr`, so no per-sample Python loop ever runs on the audio path.
"""

from __future__ import annotations

import numpy as np
import soxr

TELEPHONY_RATE = 8000
FRAME_MS = 20
FRAME_SAMPLES = TELEPHONY_RATE * FRAME_MS // 1000  # 160 mu-law bytes per Twilio frame
MULAW_SILENCE = 0xFF

_BIAS = 0x84


def _build_decode_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.int32)
    inverted = ~codes & 0xFF
    sign = inverted & 0x80
    exponent = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _build_encode_table() -> np.ndarray:
    """Encoding table indexed by the PCM value + 32768 (65536 entries, built once).

    Mirrors the G.711 reference (14-bit magnitude, bias 33, eight segments) so our bytes
    are bit-identical to what telephone networks produce."""
    pcm14 = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(pcm14 < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(pcm14), 8159) + 33
    segment_ends = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    segment = np.searchsorted(segment_ends, magnitude)
    code = np.where(segment >= 8, 0x7F, (segment << 4) | ((magnitude >> (segment + 1)) & 0x0F))
    table: np.ndarray = ((code ^ mask) & 0xFF).astype(np.uint8)
    return table


_DECODE = _build_decode_table()
_ENCODE = _build_encode_table()


def mulaw_to_pcm16(data: bytes) -> np.ndarray:
    """Decode mu-law bytes to int16 samples."""
    decoded: np.ndarray = _DECODE[np.frombuffer(data, dtype=np.uint8)]
    return decoded


def pcm16_to_mulaw(samples: np.ndarray) -> bytes:
    """Encode int16 samples (any shape, flattened) to mu-law bytes."""
    idx = samples.astype(np.int32).ravel() + 32768
    return _ENCODE[idx].tobytes()


def float_to_pcm16(samples: np.ndarray) -> np.ndarray:
    pcm: np.ndarray = (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
    return pcm


def pcm16_to_float(samples: np.ndarray) -> np.ndarray:
    return samples.astype(np.float32) / 32768.0


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample int16 or float32 mono audio with soxr (keeps the dtype)."""
    if from_rate == to_rate or samples.size == 0:
        return samples
    out: np.ndarray = soxr.resample(samples, from_rate, to_rate, quality="HQ")
    return out


def rms_dbfs(samples: np.ndarray) -> float:
    """Level of int16 samples in dBFS (-inf-safe: silence reports -100)."""
    if samples.size == 0:
        return -100.0
    mean_square = float(np.mean(samples.astype(np.float64) ** 2))
    if mean_square <= 0.0:
        return -100.0
    return 10.0 * float(np.log10(mean_square / (32768.0**2)))


def mulaw_duration_ms(data: bytes) -> float:
    return len(data) * 1000.0 / TELEPHONY_RATE


def silence_mulaw(ms: int) -> bytes:
    return bytes([MULAW_SILENCE]) * (TELEPHONY_RATE * ms // 1000)


def tone_pcm16(ms: float, freq: float = 220.0, rate: int = TELEPHONY_RATE, level: float = 0.3) -> np.ndarray:
    """A voiced, syllable-like test signal: a tone with a 4 Hz amplitude envelope."""
    n = int(rate * ms / 1000)
    t = np.arange(n, dtype=np.float32) / rate
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t)
    wave = level * envelope * np.sin(2 * np.pi * freq * t)
    return float_to_pcm16(wave)
