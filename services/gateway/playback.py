"""What the caller's reply playback is doing, with no socket: the state behind every
media, mark and `clear` the gateway sends Twilio.

TTS workers send reply audio in any order across sentences (they synthesize in parallel),
possibly twice for one sentence (the orchestrator's watchdog retries a dead worker's
sentence, then gives up with an empty "skip"), and possibly late (a turn cancelled by a
barge-in). `Playback` decides what goes out and in which order, what is held while the
caller talks over the reply (pause), what Twilio still holds unplayed (the in-flight
chunks, known from the mark echoes) and what a `clear` throws away.

A `clear` is where what the caller heard is decided, once: Twilio then sends back every
outstanding mark, flushed or played alike, so the echoes that follow it cannot say.
`playback_position` estimates it from the last echo and the time since; the chunks heard
are reported as played at the clear, the rest of the paused turn is held for a resume, and
the rest of a newer turn (already on its way behind the turn being cleared) goes out again
at once, since Twilio threw it away too.

Its methods are synchronous, so each is atomic with respect to the others on the event
loop. The media stream calls the ones that decide what goes on the wire (`push`,
`pause`, `resume`, `flush`) and writes what they return under one send lock, so the
in-flight chunks a pause holds are exactly those sent before its `clear`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import NamedTuple

from prometheus_client import Counter as MetricCounter

from proto import AudioFrame, FrameFlags, MarkName
from services.gateway.playback_position import InFlight, heard_at_clear, heard_part
from voxline.audio import mulaw_duration_ms

log = logging.getLogger("voxline.gateway.playback")

STALE_DROPPED = MetricCounter(
    "voxline_gateway_stale_frames_dropped_total", "Reply audio of cancelled or old turns dropped"
)


class Chunk(NamedTuple):
    """A reply chunk and the mark that follows it on the wire, so its echo says it was heard."""

    frame: AudioFrame
    mark: MarkName


@dataclass
class Cleared:
    """What a `clear` settled, for the media stream to act on after writing it."""

    heard: list[MarkName] = field(default_factory=list)  # reached before the clear: report as played
    resend: list[Chunk] = field(default_factory=list)  # newer turns' audio it threw away: send again now


@dataclass
class ReplyOrder:
    """Puts one turn's audio back in order: sentence by sentence, chunk by chunk, and of
    each sentence only its newest synthesis attempt.

    A sentence may be synthesized more than once (`AudioFrame.attempt`): when a TTS worker
    dies, the orchestrator asks another for the same sentence (attempt 1), and if that
    fails too, sends an empty skip (attempt 2: chunk 0, END_OF_SENTENCE, no audio) so the
    reply moves on. Every attempt numbers its chunks from 0, so (sentence, chunk) alone
    cannot tell them apart: the newest attempt of a sentence wins, frames of older ones
    still pending are dropped, and late frames of older ones are dropped on arrival.

    If the caller already heard the start of the sentence from an older attempt, playback
    of that sentence restarts at chunk 0 of the newer one: the caller hears the sentence
    again from its beginning rather than "the rest". Two syntheses of a sentence are two
    different recordings (another worker, maybe another provider, other chunk
    boundaries), so chunk N of the retry is not the continuation of chunk N-1 of the
    first attempt; splicing them would cut mid-word. A restarted sentence is what a person
    does after stumbling, and it keeps the sentence's played-ms count (the marks' `e`)
    measured on one recording, so what the orchestrator computes as heard stays right.
    A skip restarts the sentence as an empty one: it closes at once and the reply goes on.
    """

    turn_id: int
    seq: int = 0  # the sentence being played
    chunk: int = 0  # its next chunk
    sentence_ms: float = 0.0  # audio of the current sentence released so far
    pending: dict[tuple[int, int], AudioFrame] = field(default_factory=dict)  # newest attempts only
    attempts: dict[int, int] = field(default_factory=dict)  # sentence -> newest attempt seen

    def push(self, frame: AudioFrame) -> list[Chunk] | None:
        """The chunks this frame releases, in order; None when the frame is stale (an older
        attempt, a sentence already played through, a chunk already played)."""
        seq = frame.seq
        if seq < self.seq:
            return None
        newest = self.attempts.get(seq, -1)
        if frame.attempt < newest:
            return None
        if frame.attempt > newest:
            self.attempts[seq] = frame.attempt
            if newest >= 0:
                self._supersede(seq)
        elif seq == self.seq and frame.chunk < self.chunk:
            return None
        self.pending[(seq, frame.chunk)] = frame
        return self._release()

    def _supersede(self, seq: int) -> None:
        """A newer attempt of sentence `seq` arrived: forget the older one."""
        for key in [key for key in self.pending if key[0] == seq]:
            del self.pending[key]
        if seq == self.seq:
            self.chunk, self.sentence_ms = 0, 0.0

    def _release(self) -> list[Chunk]:
        ready: list[Chunk] = []
        while (frame := self.pending.pop((self.seq, self.chunk), None)) is not None:
            sentence_end = bool(frame.flags & FrameFlags.END_OF_SENTENCE)
            self.sentence_ms += mulaw_duration_ms(frame.payload)
            turn_end = bool(frame.flags & FrameFlags.END_OF_TURN)
            mark = MarkName(self.turn_id, self.seq, self.chunk, int(self.sentence_ms), sentence_end, turn_end)
            ready.append(Chunk(frame, mark))
            if sentence_end:
                self.attempts.pop(self.seq, None)
                self.seq, self.chunk, self.sentence_ms = self.seq + 1, 0, 0.0
            else:
                self.chunk += 1
        return ready


class Playback:
    """One call's reply playback: ordering, pause/hold/resume, clear, cancel by turn."""

    def __init__(self) -> None:
        self.order: ReplyOrder | None = None
        self.cancelled_upto = 0  # this turn and every older one are cancelled
        self.inflight: deque[InFlight] = deque()  # sent, mark not echoed yet: what a `clear` drops
        self.settled: Counter[str] = Counter()  # decided at a clear: their one echo still to come says nothing
        self.paused_turn = 0
        self.held: list[Chunk] = []  # what a resume plays
        self.last_echo_us = 0  # when the newest played mark came back
        self.dropped = 0  # stale frames dropped (old turns, old attempts)
        self._audio_turn = 0  # the newest turn whose first audio went out

    # --- reply audio in ------------------------------------------------------------

    def push(self, frame: AudioFrame) -> list[Chunk]:
        """A TTS frame arrived: the chunks to send now, in order. While its turn is paused
        they are held instead, and a cancelled or older turn's frames are dropped."""
        if frame.turn_id <= self.cancelled_upto:
            return self._drop()
        order = self.order
        if order is None or frame.turn_id > order.turn_id:
            order = self.order = ReplyOrder(frame.turn_id)
        elif frame.turn_id < order.turn_id:
            return self._drop()
        ready = order.push(frame)
        if ready is None:
            return self._drop()
        if frame.turn_id != self.paused_turn:
            return ready
        if frame.attempt and self.held:  # a retried sentence restarts: its older attempt's chunks go
            self.held = [c for c in self.held if not _older_attempt(c.frame, frame)]
        self.held.extend(ready)
        return []

    def _drop(self) -> list[Chunk]:
        self.dropped += 1
        STALE_DROPPED.inc()
        return []

    # --- what went out, what came back ---------------------------------------------

    def may_send(self, frame: AudioFrame) -> bool:
        """Checked before each chunk goes out: a cancel stops a send already under way."""
        return frame.turn_id > self.cancelled_upto

    def sent(self, chunk: Chunk, at_us: int) -> bool:
        """The chunk (media, then its mark) is on the wire; True if it is the first audio of
        its turn (the orchestrator's latency clock stops there)."""
        self.inflight.append((chunk.frame, chunk.mark, at_us))
        if chunk.frame.payload and chunk.frame.turn_id > self._audio_turn:
            self._audio_turn = chunk.frame.turn_id
            return True
        return False

    def mark_echoed(self, name: str, at_us: int) -> MarkName | None:
        """Twilio echoed a mark: the chunk it closes was played, unless the mark was in
        flight at a `clear` (decided there, see `Cleared`) or is not in flight at all (then
        None).

        Every mark in flight at a clear gets exactly one echo, played or flushed, and all
        of them arrive before the echo of any mark written after the clear. ASSUMPTION:
        Twilio handles our messages in order and sends the flushed marks back as it handles
        the clear, over the one ordered socket. So the first echoes of settled names are
        those, even when a resume has already sent the same names again."""
        if self.settled[name]:
            self.settled[name] -= 1
            if not self.settled[name]:
                del self.settled[name]
            return None
        mark = MarkName.parse(name)
        if mark is None or not any(sent == mark for _, sent, _ in self.inflight):
            log.warning("echo of a mark that is not in flight: %r", name[:80])
            return None
        if self.settled:
            # An echo of a mark written after the clear: whatever the clear left unechoed
            # will never come, and must not swallow the echo of a resent mark later.
            log.warning("%d marks in flight at a clear were never sent back", self.settled.total())
            self.settled.clear()
        while self.inflight:
            _, sent, _ = self.inflight.popleft()
            if sent == mark:
                break
        self.last_echo_us = at_us
        return mark

    # --- orders from the orchestrator ----------------------------------------------

    def flush(self, turn_upto: int, at_us: int) -> Cleared | None:
        """If Twilio holds audio of this turn or older ones, the caller must send `clear`
        (at `at_us`) before anything else goes out, then act on the `Cleared`; else None."""
        if not any(frame.turn_id <= turn_upto for frame, _, _ in self.inflight):
            return None
        cleared = Cleared()
        held: list[Chunk] = []
        heard = heard_at_clear(self.inflight, self.last_echo_us, at_us)
        for (frame, mark, _), (samples, whole) in zip(self.inflight, heard, strict=True):
            self.settled[mark.encode()] += 1
            live = frame.turn_id > self.cancelled_upto  # a cancelled turn's hearing no longer matters
            if whole:
                if live:
                    cleared.heard.append(mark)
                continue
            if samples:
                if live:
                    cleared.heard.append(heard_part(mark, frame, samples))
                frame = dataclasses.replace(frame, payload=frame.payload[samples:])
            if frame.turn_id == self.paused_turn:
                held.append(Chunk(frame, mark))
            elif live and frame.turn_id > turn_upto:
                cleared.resend.append(Chunk(frame, mark))
        self.inflight.clear()
        self.held[:0] = held
        return cleared

    def pause(self, turn_id: int, at_us: int) -> Cleared | None:
        """Hold the turn: what Twilio holds of it that the caller has not heard yet, and
        everything still to come, waits for `resume`. Not None when Twilio must be sent
        `clear` now (see `flush`)."""
        if turn_id <= self.cancelled_upto:
            return None
        self.paused_turn = turn_id
        return self.flush(turn_id, at_us)

    def resume(self, turn_id: int) -> list[Chunk]:
        """The chunks to send now that the paused turn goes on."""
        if not turn_id or self.paused_turn != turn_id:
            return []
        self.paused_turn = 0
        held, self.held = self.held, []
        return held

    def cancel(self, turn_id: int) -> None:
        """Drop this turn and every older one, from now on; `flush` then says whether Twilio
        needs a `clear`."""
        self.cancelled_upto = max(self.cancelled_upto, turn_id)
        if self.order is not None and self.order.turn_id <= turn_id:
            self.order = None
        if self.paused_turn and self.paused_turn <= turn_id:
            self.paused_turn = 0
            self.held = []


def _older_attempt(held: AudioFrame, newer: AudioFrame) -> bool:
    return held.turn_id == newer.turn_id and held.seq == newer.seq and held.attempt < newer.attempt
