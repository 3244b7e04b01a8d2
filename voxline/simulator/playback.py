"""A model of Twilio's outbound playback buffer, driven by an injectable clock.

The gateway learns what the caller heard only from mark echoes, so the simulator must
echo marks at the moment real playback would reach them: audio plays at exactly 8000
samples/s from the time it arrives (or from the end of the audio queued before it), a
mark is due when the audio queued before it has played, and `clear` drops the rest of
the audio and sends back every outstanding mark at once. Everything is computed from the
schedule rather than from ticks, so timing is as exact as the clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property

from proto.marks import MarkName
from voxline.audio import TELEPHONY_RATE

_EPS = 1e-6


@dataclass
class Chunk:
    """One received media payload and when it plays; `turn_id` is filled by the next mark."""

    received_at: float
    start: float
    end: float
    samples: int
    turn_id: int | None = None
    cut: bool = False  # truncated (or dropped entirely) by a clear or the call's end
    mark: str | None = None  # the mark that followed it: which piece of the reply it is
    sentence_end_ms: float | None = None  # where its audio ends in its sentence, per the mark

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass
class PendingMark:
    name: str
    received_at: float
    due: float
    echoed_at: float | None = None
    by_clear: bool = False

    @cached_property
    def parsed(self) -> MarkName | None:
        """Parsed once: waits re-check every echoed mark on each event of the call."""
        return MarkName.parse(self.name)


@dataclass(frozen=True)
class VoiceStop:
    """A moment the agent's voice went quiet for the caller."""

    at: float
    kind: str  # "clear" (buffer emptied by clear) or "dry" (ran out of audio)
    turn_id: int | None = None  # whose audio went quiet


class PlaybackBuffer:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.chunks: list[Chunk] = []
        self.marks: list[PendingMark] = []
        self.clear_times: list[tuple[float, bool]] = []  # (time, buffer was non-empty)
        self._tail: float | None = None  # when the last queued audio finishes
        self._unattributed: list[Chunk] = []
        self._unmarked: list[Chunk] = []  # like _unattributed, but a clear orphans them
        self._first_pending = 0  # marks before this index are all echoed (skip them)

    # -- input from the gateway ---------------------------------------------------------

    def add_audio(self, payload: bytes) -> Chunk:
        now = self.clock()
        start = now if self._tail is None else max(now, self._tail)
        samples = len(payload)
        chunk = Chunk(received_at=now, start=start, end=start + samples / TELEPHONY_RATE, samples=samples)
        self._tail = chunk.end
        self.chunks.append(chunk)
        self._unattributed.append(chunk)
        self._unmarked.append(chunk)
        return chunk

    def add_mark(self, name: str) -> list[PendingMark]:
        """Queue a mark behind the audio; returns it at once if nothing is left to play."""
        now = self.clock()
        due = now if self._tail is None else max(now, self._tail)
        mark = PendingMark(name=name, received_at=now, due=due)
        self.marks.append(mark)
        parsed = mark.parsed
        if parsed is not None:
            for chunk in self._unattributed:
                chunk.turn_id = parsed.turn_id
            self._unattributed.clear()
            # The mark's end_ms places the audio queued before it inside its sentence, so a
            # chunk played twice (pause, resend) or never is known exactly, not by guessing.
            pos = float(parsed.end_ms)
            for chunk in reversed(self._unmarked):
                chunk.mark = name
                chunk.sentence_end_ms = pos
                pos -= chunk.samples * 1000.0 / TELEPHONY_RATE
        self._unmarked.clear()
        return self.due_marks()

    def clear(self) -> list[PendingMark]:
        """Drop unplayed audio and send back every mark still outstanding, as Twilio does.

        Twilio's Media Streams "WebSocket Messages" page, section "Send a Clear message": a
        `clear` empties all buffered audio and causes any pending `mark` messages to be sent
        back (https://www.twilio.com/docs/voice/media-streams/websocket-messages).
        A flushed mark's echo is the same `mark` event as a played one: the gateway cannot
        tell them apart, and `by_clear` exists only for the simulator's own accounting.

        Marks that playback had already reached go out first, as played: Twilio would have
        echoed them before the `clear` arrived; only the player task had not woken yet.
        ASSUMPTION: the flushed marks come back in the order they were sent, before any
        message the gateway writes after the `clear` (the page does not say; one socket,
        processed in order, behaves so).
        """
        now = self.clock()
        played = self.due_marks()
        was_playing = self.is_playing(now)
        self.clear_times.append((now, was_playing))
        self._cut_at(now)
        self._unmarked.clear()  # their mark, if it ever comes, names audio sent after the clear
        released = [m for m in self.marks[self._first_pending :] if m.echoed_at is None]
        for mark in released:
            mark.echoed_at = now
            mark.by_clear = True
        return played + released

    def stream_lost(self) -> None:
        """The media stream broke: what was queued for it never plays, and its marks are
        never echoed (Twilio echoes marks of a live stream only). A new stream starts empty."""
        now = self.clock()
        self._cut_at(now)
        self.marks[self._first_pending :] = [m for m in self.marks[self._first_pending :] if m.echoed_at is not None]
        self._unattributed.clear()
        self._unmarked.clear()

    def finish(self) -> None:
        """The call ended: whatever had not played yet never will."""
        self._cut_at(self.clock())

    def _cut_at(self, now: float) -> None:
        for chunk in self.chunks:
            if chunk.end > now + _EPS:
                chunk.end = max(chunk.start, now)
                chunk.cut = True
        if self._tail is not None and self._tail > now:
            self._tail = now

    # -- time passing -------------------------------------------------------------------

    def due_marks(self) -> list[PendingMark]:
        """Marks that playback has reached by now and that were not echoed yet, in order."""
        now = self.clock()
        due: list[PendingMark] = []
        self._skip_echoed()
        for mark in self.marks[self._first_pending :]:
            if mark.echoed_at is not None:
                continue
            if mark.due > now + _EPS:
                break
            mark.echoed_at = now
            due.append(mark)
        return due

    def next_due(self) -> float | None:
        """When the next pending mark falls due; the caller sleeps until then."""
        self._skip_echoed()
        for mark in self.marks[self._first_pending :]:
            if mark.echoed_at is None:
                return mark.due
        return None

    def _skip_echoed(self) -> None:
        """Marks echo in order (or all at once on clear), so a long call's echoed prefix
        need not be rescanned on every playback event."""
        while self._first_pending < len(self.marks) and self.marks[self._first_pending].echoed_at is not None:
            self._first_pending += 1

    def is_playing(self, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        return self._tail is not None and self._tail > now + _EPS

    def quiet_since(self, now: float | None = None) -> float | None:
        """When the line last went quiet (the agent's audio ended or was cleared), or None
        while audio plays; 0.0 when nothing was ever played."""
        now = self.clock() if now is None else now
        if self.is_playing(now):
            return None
        return self._tail if self._tail is not None else 0.0

    def playing_until(self) -> float | None:
        return self._tail

    # -- what was heard -----------------------------------------------------------------

    def played(self, now: float | None = None) -> list[Chunk]:
        """Audio actually heard up to now, each chunk trimmed to the part that played."""
        now = self.clock() if now is None else now
        heard: list[Chunk] = []
        for c in self.chunks:
            if c.start >= now or c.end <= c.start:
                continue
            end = min(c.end, now)
            heard.append(replace(c, end=end, cut=c.cut or end < c.end))
        return heard

    def voice_stops(self, now: float | None = None) -> list[VoiceStop]:
        """Moments the caller stopped hearing the agent: clears mid-audio and underruns."""
        now = self.clock() if now is None else now
        heard = self.played(now)
        clears = [t for t, playing in self.clear_times if playing and t <= now]
        stops: list[VoiceStop] = []
        for t in clears:
            cut = [c.turn_id for c in heard if c.start < t + _EPS and abs(c.end - t) < _EPS]
            stops.append(VoiceStop(t, "clear", cut[-1] if cut else None))
        for i, chunk in enumerate(heard):
            nxt = heard[i + 1] if i + 1 < len(heard) else None
            if any(abs(chunk.end - t) < _EPS for t in clears):
                continue
            if (nxt is None and chunk.end <= now - _EPS) or (nxt is not None and nxt.start > chunk.end + 1e-3):
                stops.append(VoiceStop(chunk.end, "dry", chunk.turn_id))
        return sorted(stops, key=lambda s: s.at)


@dataclass(frozen=True)
class BargeInMeasure:
    onset: float
    interrupted_turn: int | None
    stopped_at: float | None
    stopped_by: str | None
    latency_ms: float | None
    stale_audio_ms: float


def measure_barge_in(onset: float, heard: list[Chunk], stops: list[VoiceStop]) -> BargeInMeasure:
    """How long the agent kept talking over the caller, and whether old audio came back.

    The interrupted turn is the one audible at onset. Its voice stops at the first clear
    that cut its audio (or an older turn's) after onset or, when the gateway never
    cleared, where the buffer first ran dry; any audio of that turn or older heard after
    that moment is stale audio the gateway failed to cancel.
    """
    playing = [c for c in heard if c.start <= onset < c.end]
    if not playing:
        return BargeInMeasure(onset, None, None, None, None, 0.0)
    interrupted = playing[0].turn_id
    if interrupted is None:  # its mark never came; the last attributed audio is the best guess
        earlier = [c.turn_id for c in heard if c.start <= onset and c.turn_id is not None]
        interrupted = max(earlier) if earlier else None
    after = [s for s in stops if s.at >= onset - _EPS]
    if interrupted is not None:
        after = [s for s in after if s.turn_id is None or s.turn_id <= interrupted]
    stop = next((s for s in after if s.kind == "clear"), None) or next(iter(after), None)
    if stop is None:
        return BargeInMeasure(onset, interrupted, None, None, None, 0.0)
    stale = 0.0
    if interrupted is not None:
        for c in heard:
            if c.turn_id is not None and c.turn_id <= interrupted and c.end > stop.at:
                stale += c.end - max(c.start, stop.at)
    return BargeInMeasure(
        onset=onset,
        interrupted_turn=interrupted,
        stopped_at=stop.at,
        stopped_by=stop.kind,
        latency_ms=(stop.at - onset) * 1000.0,
        stale_audio_ms=stale * 1000.0,
    )
