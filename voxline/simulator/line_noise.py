"""A noisy phone line: what the caller's side sends besides the caller's own voice.

Two things real lines add. Bursts of noise (a crackle, a door, a rustle on the handset)
and the agent's own voice coming back faintly (echo: the handset or the network returns
part of what it plays). Neither has words, and both trip a recogniser's voice activity
detector; a call through such a line shows whether the agent mistakes them for the caller.

The echo is the audio the caller is hearing, as the playback model plays it (so a `clear`
silences it too), `echo_delay_ms` later and `echo_gain_db` quieter. ASSUMPTION: -30 dB, a
round figure for what is left after the handset's and network's echo control; the echo
path loss a line must have is not one published number. Bursts start every
`burst_every_ms` of line time, only while the agent is audible and the caller silent,
and last `burst_ms`: white noise at `burst_dbfs`. `bursts_after` keeps them to the reply
to one utterance (after the caller's n-th, before the next): a burst pauses the agent, and
the simulator takes a reply cleared by a pause for a finished one.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np

from voxline.audio import FRAME_SAMPLES, TELEPHONY_RATE, mulaw_to_pcm16, pcm16_to_mulaw
from voxline.simulator.playback import Chunk

KEEP_S = 2.0  # played chunks older than this cannot echo any more


@dataclass
class LineNoise:
    burst_every_ms: int = 1300
    burst_ms: int = 250
    burst_dbfs: float = -30.0
    echo_gain_db: float | None = -30.0  # None: no echo
    echo_delay_ms: int = 40
    seed: int = 1
    bursts_after: int | None = None  # only after the caller's n-th utterance, until the next
    bursts: list[float] = field(default_factory=list)  # line clock of each burst's start
    echo_frames: int = 0  # frames that carried some echo
    _played: list[tuple[Chunk, np.ndarray]] = field(default_factory=list)
    _burst_until: float = 0.0
    _next_burst: float | None = None
    _utterances = 0  # the caller's utterances begun so far
    _speaking = False

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def heard(self, chunk: Chunk, payload: bytes) -> None:
        """Audio the playback model queued for the caller (its `chunk` says when it plays)."""
        self._played.append((chunk, mulaw_to_pcm16(payload).astype(np.float32)))

    def mix(self, payload_b64: str, now: float, caller_speaking: bool) -> str:
        """The frame the caller's side sends at `now` (the end of its 20 ms), noise added."""
        self._played = [(c, pcm) for c, pcm in self._played if c.end > now - KEEP_S]
        pcm = mulaw_to_pcm16(base64.b64decode(payload_b64)).astype(np.float32)
        added = False
        if self.echo_gain_db is not None:
            echo = self._echo(now - self.echo_delay_ms / 1000.0)
            if echo is not None:
                pcm += echo * 10 ** (self.echo_gain_db / 20)
                added = True
                self.echo_frames += 1
        if self._burst(now, caller_speaking):
            level = 32767 * 10 ** (self.burst_dbfs / 20)
            pcm += self._rng.standard_normal(len(pcm)).astype(np.float32) * level
            added = True
        if not added:
            return payload_b64
        mixed = np.clip(pcm, -32767, 32767).astype(np.int16)
        return base64.b64encode(pcm16_to_mulaw(mixed)).decode("ascii")

    def _echo(self, end: float) -> np.ndarray | None:
        """The 20 ms of agent audio the caller heard up to `end`, or None if none."""
        times = end - (FRAME_SAMPLES - np.arange(FRAME_SAMPLES)) / TELEPHONY_RATE
        out = np.zeros(FRAME_SAMPLES, dtype=np.float32)
        found = False
        for chunk, pcm in self._played:
            inside = (times >= chunk.start) & (times < chunk.end)
            if inside.any():
                index = ((times[inside] - chunk.start) * TELEPHONY_RATE).astype(int)
                out[inside] = pcm[np.minimum(index, len(pcm) - 1)]
                found = True
        return out if found else None

    def _burst(self, now: float, caller_speaking: bool) -> bool:
        if caller_speaking and not self._speaking:
            self._utterances += 1
        self._speaking = caller_speaking
        if now < self._burst_until:
            return True
        if self.bursts_after is not None and self._utterances != self.bursts_after:
            return False
        if self._next_burst is None:
            self._next_burst = now + self.burst_every_ms / 1000.0
        if now < self._next_burst:
            return False
        self._next_burst = now + self.burst_every_ms / 1000.0
        audible = any(chunk.start <= now < chunk.end for chunk, _ in self._played)
        if not audible or caller_speaking:
            return False
        self.bursts.append(now)
        self._burst_until = now + self.burst_ms / 1000.0
        return True
