"""The early pause of a streaming recogniser: the caller went quiet and the interim text
already covers every word, so a preemptive reply can start before the final transcript.

Deepgram's final waits out its endpointing and its own processing (~300 ms after the last
word); its interim Results keep coming meanwhile. The line's energy says where the quiet
began; an interim whose audio reaches that far into the quiet has heard everything said. Both
together make one `SpeechPaused` per pause, about a tenth of a second after the last word.
If the caller speaks again before the final, `frame` says so: the reply started on the
pause must not be heard.
"""

from __future__ import annotations

from enum import Enum

from voxline.audio import TELEPHONY_RATE, mulaw_to_pcm16, rms_dbfs

QUIET_DBFS = -40.0  # a 20 ms frame below this is no voice (phone line noise sits near -60)


class PauseEvent(Enum):
    PAUSED = "paused"  # quiet long enough, and the interim text covers the speech
    RESUMED = "resumed"  # voice again after a PAUSED: the preemptive reply is stale


class PauseWatch:
    """Offsets are bytes of call audio (8 kHz mu-law), as in the audio ledger."""

    def __init__(self, early_ms: float, quiet_dbfs: float = QUIET_DBFS) -> None:
        self.early_ms = early_ms
        self.quiet_dbfs = quiet_dbfs
        self.quiet_ms = 0.0
        self.quiet_from: int | None = None  # offset of the first quiet frame of this pause
        self.text = ""  # the newest interim text of the utterance
        self.covered_to = -1  # offset up to which that interim heard the audio
        self.paused = False  # a PAUSED went out for the current pause

    def frame(self, offset: int, payload: bytes) -> PauseEvent | None:
        """One frame of the utterance, starting at `offset`."""
        if rms_dbfs(mulaw_to_pcm16(payload)) > self.quiet_dbfs:
            self.quiet_ms, self.quiet_from = 0.0, None
            if self.paused:
                self.paused = False
                return PauseEvent.RESUMED
            return None
        if self.quiet_from is None:
            self.quiet_from = offset
        self.quiet_ms += len(payload) * 1000 / TELEPHONY_RATE
        return PauseEvent.PAUSED if self._ready() else None

    def interim(self, text: str, covered_to: int) -> PauseEvent | None:
        self.text, self.covered_to = text, covered_to
        return PauseEvent.PAUSED if self._ready() else None

    def utterance_ended(self) -> None:
        """The final came: the next utterance starts with no interim and no pause."""
        self.text, self.covered_to, self.paused = "", -1, False
        self.quiet_ms, self.quiet_from = 0.0, None

    def _ready(self) -> bool:
        if self.early_ms <= 0 or self.paused or not self.text or self.quiet_from is None:
            return False
        # The interim must have heard `early_ms` of the quiet too: a recogniser settles a
        # word only once it has heard the silence after it.
        settled = self.quiet_from + int(self.early_ms * TELEPHONY_RATE / 1000)
        if self.quiet_ms < self.early_ms or self.covered_to < settled:
            return False
        self.paused = True
        return True
