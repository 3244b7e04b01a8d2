"""Smart Turn v3.2: an acoustic guess whether the caller has finished their turn.

Silence alone cannot tell "What time do you open on Saturday?" (answer now) from "I need
to cancel my…" (wait); intonation and rhythm can. Smart Turn is a Whisper-tiny encoder
with a classifier head, run here on onnxruntime. It scores the last 8 s of the caller's
turn; the orchestrator combines that with a transcript score, because the model alone
calls some cut-off sentences complete.

The features are Whisper's log-mel spectrogram, computed with numpy so no `transformers`
(and no torch) is needed. They must match what the model was trained on, i.e. what
`WhisperFeatureExtractor(chunk_length=8)` yields after pipecat's left-padding to 8 s:
waveform normalised to zero mean / unit variance over the padded 8 s, centred STFT
(reflect padding, periodic Hann, n_fft 400, hop 160), power spectrum, 80 Slaney mel
filters, log10 with a 1e-10 floor, the last frame dropped, a dynamic range of 8 (in
log10 units) below the maximum, then (x + 4) / 4.

One session per worker with one intra-op thread: a decision costs ~25 ms either way on
this class of machine, and a second thread would compete with Whisper's two for the
same cores exactly when a turn ends and the transcript is wanted.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from voxline.audio import resample

log = logging.getLogger("voxline.stt.smart_turn")

RATE = 16000
WINDOW_S = 8
N_SAMPLES = RATE * WINDOW_S  # 128000: the model's fixed input length
N_FFT = 400
HOP = 160
N_MELS = 80
N_FRAMES = N_SAMPLES // HOP  # 800
LOG_FLOOR = 1e-10
NORM_EPS = 1e-7
DYNAMIC_RANGE = 8.0
NO_MODEL = -1.0  # what SpeechEnded.end_of_turn_probability says when there is no acoustic model


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa htk=False): linear to 1 kHz, logarithmic above."""
    linear = hz * 3.0 / 200.0
    logarithmic = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * 27.0 / np.log(6.4)
    return np.where(hz >= 1000.0, logarithmic, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    linear = mel * 200.0 / 3.0
    logarithmic = 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0)
    return np.where(mel >= 15.0, logarithmic, linear)


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, rate: int = RATE) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, area-normalised ("slaney"), float64."""
    bin_hz = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(rate / 2.0)), n_mels + 2))
    left, centre, right = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bin_hz[None, :] - left) / (centre - left)
    falling = (right - bin_hz[None, :]) / (right - centre)
    triangles = np.clip(np.minimum(rising, falling), 0.0, None)
    filters: np.ndarray = triangles * (2.0 / (right - left))
    return filters


_MEL = mel_filterbank()
_HANN = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic, as torch.hann_window


def last_window(audio_16k: np.ndarray) -> np.ndarray:
    """The last 8 s as float32, zero-padded at the start: the end of the turn is what matters."""
    audio = np.asarray(audio_16k, dtype=np.float32).reshape(-1)[-N_SAMPLES:]
    if audio.size < N_SAMPLES:
        audio = np.concatenate([np.zeros(N_SAMPLES - audio.size, np.float32), audio])
    return audio


def log_mel_features(audio_16k: np.ndarray) -> np.ndarray:
    """(80, 800) float32 features of the last 8 s; values lie in [(max - 8 + 4) / 4, (max + 4) / 4]."""
    x = last_window(audio_16k)
    x = (x - x.mean()) / np.sqrt(x.var() + NORM_EPS)  # in float32, like the reference extractor
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]  # (801, 400), no copy
    power = np.abs(np.fft.rfft(frames * _HANN, axis=1)) ** 2  # (801, 201)
    log_mel = np.log10(np.maximum(_MEL @ power.T, LOG_FLOOR))[:, :N_FRAMES]  # (80, 800)
    log_mel = np.maximum(log_mel, log_mel.max() - DYNAMIC_RANGE)
    features: np.ndarray = ((log_mel + 4.0) / 4.0).astype(np.float32)
    return features


class SmartTurn:
    """One ONNX session; `predict` is blocking and thread-safe (onnxruntime's run is)."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = path
        self.session: Any = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_name: str = self.session.get_inputs()[0].name

    def predict(self, audio_16k: np.ndarray) -> float:
        """Probability in [0, 1] that the turn ending this audio (16 kHz float mono) is complete."""
        features = log_mel_features(audio_16k)[None, :, :]
        (out,) = self.session.run(None, {self.input_name: features})
        # The graph ends in a sigmoid despite the output's name ("logits"); clip against rounding.
        return float(np.clip(out.reshape(-1)[0], 0.0, 1.0))


_warned_missing = False


def load_smart_turn(path: Path | None = None, threads: int = 1) -> SmartTurn | None:
    """The model, warmed up; None (with one warning per process) when the file is absent,
    so a worker without it still transcribes and reports NO_MODEL instead of failing."""
    global _warned_missing
    from voxline.smart_turn_fetch import is_verified, model_path

    target = path or model_path()
    if not is_verified(target):
        if not _warned_missing:
            _warned_missing = True
            log.warning(
                "smart turn model %s is missing: end of turn uses silence and transcript only "
                "(run `python -m voxline.smart_turn_fetch`)",
                target,
            )
        return None
    model = SmartTurn(target, threads)
    model.predict(np.zeros(RATE, np.float32))  # the first run allocates; pay for it at load
    log.info("model smart-turn v3.2 loaded from %s", target)
    return model


class TurnAudio:
    """The caller's current turn, kept across the short pauses that end an STT utterance.

    Smart Turn judges how speech *ends*, so it should hear "I need to cancel my … uh …
    appointment" as one piece, not just the last fragment after a pause. All 8 kHz
    windows go into a ring of the last 8 s; a turn starts with the preroll of an utterance
    that follows a gap longer than `gap_ms` (by then the orchestrator has ended the turn).
    """

    def __init__(self, window_samples: int, rate: int, gap_ms: float) -> None:
        self.rate = rate
        self.window_ms = window_samples * 1000.0 / rate
        self._ring: deque[np.ndarray] = deque(maxlen=max(1, int(np.ceil(WINDOW_S * 1000 / self.window_ms))))
        self._gap_windows = gap_ms / self.window_ms
        self._pushed = 0  # windows ever pushed; positions below are absolute
        self._turn_start = 0
        self._last_end: int | None = None

    def push(self, window: np.ndarray) -> None:
        self._ring.append(window)
        self._pushed += 1

    def speech_started(self, preroll_windows: int) -> None:
        """The VAD confirmed speech; the last `preroll_windows` pushed belong to it."""
        if self._last_end is None or self._pushed - preroll_windows - self._last_end > self._gap_windows:
            self._turn_start = self._pushed - preroll_windows

    def speech_ended(self) -> None:
        self._last_end = self._pushed

    def audio_16k(self) -> np.ndarray:
        """The turn so far (at most its last 8 s, trailing pause included), resampled to 16 kHz."""
        keep = min(len(self._ring), self._pushed - self._turn_start)
        if keep <= 0:
            return np.zeros(0, np.float32)
        windows = list(self._ring)[-keep:]
        return resample(np.concatenate(windows).astype(np.float32, copy=False), self.rate, RATE)
