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


# --- DTMF (ITU-T Q.23 keypad tones) ---------------------------------------------------
# Each key is the sum of a low (row) and a high (column) frequency. Twilio's Media Streams
# cannot send digits as a message (only media, mark and clear go to Twilio), so an agent
# that keys digits into an IVR plays these tones as audio. Q.24 has receivers accept tones
# of 40 ms and more; 100 ms with 70 ms between keys is what phones send when dialled fast,
# and IVRs take it reliably.

DTMF_ROWS = (697.0, 770.0, 852.0, 941.0)
DTMF_COLUMNS = (1209.0, 1336.0, 1477.0, 1633.0)
DTMF_KEYS = ("123A", "456B", "789C", "*0#D")
DTMF_TONE_MS = 100
DTMF_GAP_MS = 70
DTMF_PAUSE_MS = 500  # what `w` (wait) in a digit string stands for, as on a phone's dialler
_DTMF_LEVEL = 0.35  # of full scale, each of the two tones (about -12 dBFS each, no clipping)
_KEY_PAIRS = {key: (DTMF_ROWS[r], DTMF_COLUMNS[c]) for r, row in enumerate(DTMF_KEYS) for c, key in enumerate(row)}


def dtmf_pcm16(digits: str, tone_ms: int = DTMF_TONE_MS, gap_ms: int = DTMF_GAP_MS) -> np.ndarray:
    """The tones of `digits` (0-9 * # A-D; `w` a pause of DTMF_PAUSE_MS) at 8 kHz, each
    followed by `gap_ms` of silence. Raise ValueError on any other character."""
    pieces: list[np.ndarray] = []
    n = TELEPHONY_RATE * tone_ms // 1000
    t = np.arange(n, dtype=np.float64) / TELEPHONY_RATE
    gap = np.zeros(TELEPHONY_RATE * gap_ms // 1000, dtype=np.int16)
    for key in digits.upper():
        if key == "W":
            pieces.append(np.zeros(TELEPHONY_RATE * DTMF_PAUSE_MS // 1000, dtype=np.int16))
            continue
        if key not in _KEY_PAIRS:
            raise ValueError(f"not a DTMF key: {key!r}")
        low, high = _KEY_PAIRS[key]
        wave = _DTMF_LEVEL * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t))
        pieces.extend([float_to_pcm16(wave.astype(np.float32)), gap])
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)


def dtmf_mulaw(digits: str, tone_ms: int = DTMF_TONE_MS, gap_ms: int = DTMF_GAP_MS) -> bytes:
    return pcm16_to_mulaw(dtmf_pcm16(digits, tone_ms, gap_ms))


class DtmfDetector:
    """Finds keypad tones in 8 kHz audio fed in pieces of any size (Goertzel filters at the
    eight Q.23 frequencies over blocks of 205 samples, 25.6 ms, the classic choice).

    A block holds a key when its strongest row and column tones carry most of its energy
    (`share`), neither is more than `twist_db` below the other, and the block is not
    near-silent; a key counts once it holds for two blocks in a row, and again only after a
    block without it, so one long press is one digit. Speech rarely puts most of its energy
    into exactly two of these frequencies for 50 ms."""

    BLOCK = 205
    _FREQUENCIES = DTMF_ROWS + DTMF_COLUMNS

    def __init__(self, share: float = 0.6, twist_db: float = 8.0, min_dbfs: float = -40.0) -> None:
        self.share = share
        self.twist = 10 ** (-twist_db / 10)
        self.min_energy = self.BLOCK * (32768.0**2) * 10 ** (min_dbfs / 10)
        n = np.arange(self.BLOCK)
        self._basis = np.exp(-2j * np.pi * np.outer(self._FREQUENCIES, n) / TELEPHONY_RATE)
        self._pending = np.zeros(0, dtype=np.float64)
        self._candidate = ""
        self._held = 0
        self._reported = False
        self.digits = ""  # every key found so far, in order

    def feed_mulaw(self, data: bytes) -> str:
        return self.feed(mulaw_to_pcm16(data))

    def feed(self, samples: np.ndarray) -> str:
        """Take more audio; return the keys found in it (also appended to `digits`)."""
        self._pending = np.concatenate([self._pending, samples.astype(np.float64).ravel()])
        found = ""
        while self._pending.size >= self.BLOCK:
            block, self._pending = self._pending[: self.BLOCK], self._pending[self.BLOCK :]
            key = self._key(block)
            if key and key == self._candidate:
                self._held += 1
            else:
                self._candidate, self._held, self._reported = key, 1 if key else 0, False
            if key and self._held >= 2 and not self._reported:
                self._reported = True
                found += key
        self.digits += found
        return found

    def _key(self, block: np.ndarray) -> str:
        energy = float(np.dot(block, block))
        if energy < self.min_energy:
            return ""
        powers = self._powers(block)
        # A sinusoid at the filter's frequency gives power N²A²/4 and energy NA²/2: the
        # share of the block's energy at that frequency is 2·power/(N·energy).
        shares = 2 * powers / (self.BLOCK * energy)
        row, col = int(np.argmax(shares[:4])), int(np.argmax(shares[4:]))
        low, high = shares[row], shares[4 + col]
        if low + high < self.share or min(low, high) < self.twist * max(low, high):
            return ""
        return DTMF_KEYS[row][col]

    def _powers(self, block: np.ndarray) -> np.ndarray:
        """What the Goertzel recurrence ends with at each frequency, |X(f)|² of the block,
        computed as one product with the eight precomputed complex exponentials instead
        of a per-sample loop (no Python loop runs per sample on audio)."""
        spectrum = self._basis @ block
        power: np.ndarray = spectrum.real**2 + spectrum.imag**2
        return power
