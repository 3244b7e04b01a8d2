"""The caller's line as our own ear hears it, beside a streaming recogniser (Deepgram).

Two things the recogniser cannot be trusted with alone. Its pauses: Deepgram sends interim
results about once a second, not when the caller stops, so nothing it sends says "the
caller just went quiet"; the line's energy does, within a frame or two. And its onsets:
Deepgram's SpeechStarted also fires on noise and on the agent's own echo, so an onset the
line's energy does not show is held until words or a loud frame confirm it.

Per utterance: `PAUSED` once the line has been quiet `early_ms` (time to ask the recogniser
for everything it heard: Finalize), `ENDED` once quiet `end_ms` (long enough to end the
utterance), `RESUMED` when the voice comes back after a `PAUSED` (what was started on the
pause is stale).
"""

from __future__ import annotations

from collections import deque
from enum import Enum

from voxline.audio import TELEPHONY_RATE, mulaw_to_pcm16, rms_dbfs

QUIET_DBFS = -40.0  # a 20 ms frame below this is no voice (phone line noise sits near -60)
LOUD_RUNS_KEPT = 32  # the newest stretches of voice-level sound, to confirm onsets reported late


class PauseEvent(Enum):
    PAUSED = "paused"  # quiet `early_ms`: flush the recogniser
    ENDED = "ended"  # quiet `end_ms`: the utterance may end
    RESUMED = "resumed"  # voice again after a PAUSED


class PauseWatch:
    """Offsets are bytes of call audio (8 kHz mu-law), as in the audio ledger."""

    def __init__(self, early_ms: float, end_ms: float, quiet_dbfs: float = QUIET_DBFS) -> None:
        self.early_ms = early_ms
        self.end_ms = end_ms
        self.quiet_dbfs = quiet_dbfs
        self.quiet_ms = 0.0
        self.quiet_from: int | None = None  # offset of the first quiet frame of this pause
        self.loud_upto = 0  # end offset of the newest loud frame, in speech or not
        self._runs: deque[list[int]] = deque(maxlen=LOUD_RUNS_KEPT)  # [start, end) of loud stretches
        self.paused = False  # a PAUSED went out for the current pause
        self.ended = False  # an ENDED went out for the current pause

    def frame(self, offset: int, payload: bytes) -> PauseEvent | None:
        """One frame of the call, starting at `offset`."""
        if rms_dbfs(mulaw_to_pcm16(payload)) > self.quiet_dbfs:
            if self._runs and self._runs[-1][1] == offset:
                self._runs[-1][1] = offset + len(payload)
            else:
                self._runs.append([offset, offset + len(payload)])
            self.loud_upto = offset + len(payload)
            self.quiet_ms, self.quiet_from = 0.0, None
            resumed = self.paused
            self.paused = self.ended = False
            return PauseEvent.RESUMED if resumed else None
        if self.quiet_from is None:
            self.quiet_from = offset
        self.quiet_ms += len(payload) * 1000 / TELEPHONY_RATE
        if not self.paused and 0 < self.early_ms <= self.quiet_ms:
            self.paused = True
            return PauseEvent.PAUSED
        if not self.ended and self.quiet_ms >= self.end_ms:
            self.paused = self.ended = True
            return PauseEvent.ENDED
        return None

    def loud_near(self, offset: int, within: int) -> bool:
        """The line carried voice-level sound from call offset `offset` to `within` bytes after it."""
        return any(end > offset and start < offset + within for start, end in self._runs)

    def utterance_started(self) -> PauseEvent | None:
        """A new utterance: its pause events start afresh. The recogniser may report an
        onset after the sound is over: a pause already under way is owed at once."""
        quiet = self.quiet_from is not None
        self.ended = quiet and self.quiet_ms >= self.end_ms
        self.paused = self.ended or (quiet and 0 < self.early_ms <= self.quiet_ms)
        if self.ended:
            return PauseEvent.ENDED
        return PauseEvent.PAUSED if self.paused else None
