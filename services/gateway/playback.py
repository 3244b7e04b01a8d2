"""What the caller's reply playback is doing, with no socket: the state behind every
media, mark and `clear` the gateway sends Twilio.

TTS workers send reply audio in any order across sentences (they synthesize in parallel),
possibly twice for one sentence (the orchestrator's watchdog retries a dead worker's
sentence, then gives up with an empty "skip"), and possibly late (a turn cancelled by a
barge-in). `Playback` decides what goes out and in which order, what is held while the
caller talks over the reply (pause), what Twilio still holds unplayed (the in-flight
chunks, known from the mark echoes) and what a `clear` throws away.

Its methods are synchronous, so each is atomic with respect to the others on the event
loop. The media stream calls the ones that decide what goes on the wire (`push`,
`pause`, `resume`, `flush`) and writes what they return under one send lock, so the
in-flight chunks a pause holds are exactly those sent before its `clear`.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import NamedTuple

from prometheus_client import Counter as MetricCounter

from proto import AudioFrame, FrameFlags, MarkName
from services.gateway.playback_position import unplayed
from voxline.audio import mulaw_duration_ms

log = logging.getLogger("voxline.gateway.playback")

STALE_DROPPED = MetricCounter(
    "voxline_gateway_stale_frames_dropped_total", "Reply audio of cancelled or old turns dropped"
)


class Chunk(NamedTuple):
    """A reply chunk and the mark that follows it on the wire, so its echo says it was heard."""

    frame: AudioFrame
    mark: MarkName


InFlight = tuple[AudioFrame, MarkName, int]  # a chunk Twilio holds, with when we sent it (µs)


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
        self.flushing: Counter[str] = Counter()  # marks Twilio echoes because of our `clear`, not playback
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
        """Twilio echoed a mark: the chunk it closes was played, unless the echo is one of a
        `clear`'s flushed marks or a name we never wrote (then None)."""
        if self.flushing[name]:
            self.flushing[name] -= 1
            if not self.flushing[name]:
                del self.flushing[name]
            return None
        mark = MarkName.parse(name)
        if mark is None:
            log.warning("mark echo with a name we did not send: %r", name[:80])
            return None
        while self.inflight:
            _, sent, _ = self.inflight.popleft()
            if sent == mark:
                break
        self.last_echo_us = at_us
        return mark

    # --- orders from the orchestrator ----------------------------------------------

    def flush(self, turn_upto: int) -> bool:
        """If Twilio holds audio of this turn or older ones, forget everything it holds and
        return True: the caller must send `clear` before anything else goes out."""
        if not any(frame.turn_id <= turn_upto for frame, _, _ in self.inflight):
            return False
        self.flushing.update(mark.encode() for _, mark, _ in self.inflight)
        self.inflight.clear()
        return True

    def pause(self, turn_id: int, at_us: int) -> bool:
        """Hold the turn: what Twilio holds of it (less what the caller already heard, see
        `unplayed`) and everything still to come waits for `resume`. True when Twilio must be
        sent `clear` now."""
        if turn_id <= self.cancelled_upto:
            return False
        self.paused_turn = turn_id
        ours = [entry for entry in self.inflight if entry[0].turn_id == turn_id]
        if not self.flush(turn_id):
            return False
        self.held[:0] = [Chunk(frame, mark) for frame, mark in unplayed(ours, self.last_echo_us, at_us)]
        return True

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
