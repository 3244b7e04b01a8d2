"""The agent's sentences on their way to TTS, and the watchdog on each of them.

A TTS worker can die with a sentence in flight. The watchdog follows the sentence's
progress, not the whole sentence: it waits `tts_timeout_s` for the first audio (the
provider's time to first byte), then, from each `SynthesisProgress` on, only
`tts_progress_timeout_s` for the next one. A long sentence that keeps flowing is never
taken for dead, and a worker killed in its middle is noticed a progress timeout (2 s)
after its last chunk, not a sentence's length after the request. The watchdog then asks
another worker for the same sentence (attempt 1); if that also brings no result, it
sends an empty skip (attempt 2, the same `last` flag) so the reply moves on instead of
waiting on a silent line. The gateway plays only the newest attempt of a sentence (a
retried one from its start), and news of an older attempt than the newest one sent is
about audio nobody will play: it is ignored here too.

`Speech` is the part of one step (`core._Step`) that owns turns, timers and sentences.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from proto import subjects
from proto.messages import Message, SentenceSynthesized, SynthesisProgress, Synthesize, TtsError, TurnKind
from services.orchestrator import costs
from services.orchestrator.effects import CancelTimer, Effect, Publish, StartTimer
from services.orchestrator.states import CallState, transition
from services.orchestrator.timers import PendingTimer, Timer, TimerKind
from services.orchestrator.turn import Turn

if TYPE_CHECKING:
    from services.orchestrator.call import Call

log = logging.getLogger("voxline.orchestrator.call")

RETRY_ATTEMPT = 1  # another TTS worker, the same sentence
SKIP_ATTEMPT = 2  # no audio: the sentence is given up and the reply goes on


class Speech:
    def __init__(self, call: Call, now_us: int) -> None:
        self.call = call
        self.now_us = now_us
        self.effects: list[Effect] = []

    def go(self, to: CallState) -> None:
        self.call.state = transition(self.call.state, to)

    def publish(self, subject: str, message: Message, turn_id: int | None = None) -> None:
        self.effects.append(Publish(subject, message, turn_id))

    # --- turns -----------------------------------------------------------------------------

    def new_turn(self, kind: TurnKind, caller_text: str = "") -> Turn:
        call = self.call
        turn = Turn(turn_id=call.next_turn_id, kind=kind, caller_text=caller_text)
        call.next_turn_id += 1
        call.turns.append(turn)
        return turn

    def turn_by_id(self, turn_id: int) -> Turn | None:
        return next((t for t in reversed(self.call.turns) if t.turn_id == turn_id), None)

    def live_turn(self, turn_id: int) -> Turn | None:
        """The current turn, if it is `turn_id` and was not cancelled."""
        turn = self.call.current
        if turn is not None and turn.turn_id == turn_id and not turn.cancelled:
            return turn
        return None

    # --- timers ----------------------------------------------------------------------------

    def start_timer(self, timer: Timer, seconds: float) -> None:
        call = self.call
        call.timers = [p for p in call.timers if p.timer != timer]
        pending = PendingTimer(timer, call.next_timer_id, self.now_us + int(seconds * 1_000_000))
        call.next_timer_id += 1
        call.timers.append(pending)
        self.effects.append(StartTimer(timer, pending.timer_id, pending.deadline_us))

    def cancel_timer(self, timer: Timer) -> None:
        before = len(self.call.timers)
        self.call.timers = [p for p in self.call.timers if p.timer != timer]
        if len(self.call.timers) < before:
            self.effects.append(CancelTimer(timer))

    def cancel_timers_of(self, turn_id: int) -> None:
        for pending in [p for p in self.call.timers if p.timer.turn_id == turn_id]:
            self.cancel_timer(pending.timer)

    # --- sentences -------------------------------------------------------------------------

    def synthesize(self, turn: Turn, text: str, last: bool = False) -> None:
        seq = turn.next_seq
        turn.sentences[seq] = text
        if seq == 0:
            turn.mark("tts_request", self.now_us)
        if last:
            turn.closed = True
        self._send(turn, seq, attempt=0)

    def _send(self, turn: Turn, seq: int, attempt: int) -> None:
        call = self.call
        turn.attempts[seq] = attempt
        request = Synthesize(
            call_id=call.call_id,
            turn_id=turn.turn_id,
            seq=seq,
            text="" if attempt >= SKIP_ATTEMPT else turn.sentences[seq],
            voice=call.agent.voice,
            last=turn.closed and seq == turn.next_seq - 1,
            greeting=turn.kind == "greeting",
            requested_at_us=self.now_us,
            attempt=attempt,
        )
        if attempt < SKIP_ATTEMPT:
            self.start_timer(Timer(TimerKind.TTS, turn.turn_id, seq), call.limits.tts_timeout_s)
        costs.synthesis_requested(call.record.costs, request.text)
        self.publish(subjects.TTS_SYNTHESIZE, request, turn.turn_id)

    def on_tts_timeout(self, turn_id: int, seq: int) -> None:
        turn = self.turn_by_id(turn_id)
        if turn is None or not turn.active:
            return
        if turn.attempts.get(seq, 0) < RETRY_ATTEMPT:
            log.error("no TTS progress on turn %d sentence %d; asking another worker", turn_id, seq)
            self._send(turn, seq, RETRY_ATTEMPT)
        else:
            log.error("TTS failed twice on turn %d sentence %d; skipping it", turn_id, seq)
            turn.failed.add(seq)  # the caller hears nothing of it
            self._send(turn, seq, SKIP_ATTEMPT)

    def _stale(self, turn: Turn | None, seq: int, attempt: int) -> bool:
        """A result of an attempt older than the newest one sent for the sentence."""
        return turn is not None and attempt < turn.attempts.get(seq, 0)

    def on_tts_progress(self, msg: SynthesisProgress) -> None:
        """The sentence's audio is flowing: the watchdog waits for the next report only."""
        timer = Timer(TimerKind.TTS, msg.turn_id, msg.seq)
        if self._stale(self.turn_by_id(msg.turn_id), msg.seq, msg.attempt):
            return  # a superseded attempt still talking: its progress is not the sentence's
        if any(p.timer == timer for p in self.call.timers):  # else: done, failed, skipped or cancelled
            self.start_timer(timer, self.call.limits.tts_progress_timeout_s)

    def on_tts_error(self, msg: TtsError) -> None:
        log.error("TtsError: %s", msg.message)
        failed = self.turn_by_id(msg.turn_id)
        if self._stale(failed, msg.seq, msg.attempt):
            log.info("TTS error of attempt %d of turn %d sentence %d ignored: superseded", *_ids(msg))
            return
        self.cancel_timer(Timer(TimerKind.TTS, msg.turn_id, msg.seq))
        if failed is not None:
            failed.failed.add(msg.seq)

    def on_synthesized(self, msg: SentenceSynthesized) -> None:
        if self._stale(self.turn_by_id(msg.turn_id), msg.seq, msg.attempt):
            log.info("TTS result of attempt %d of turn %d sentence %d ignored: superseded", *_ids(msg))
            return
        self.cancel_timer(Timer(TimerKind.TTS, msg.turn_id, msg.seq))
        costs.audio_synthesized(self.call.record.costs, msg.audio_ms)  # sent, whether heard or not
        turn = self.live_turn(msg.turn_id)
        if turn is None:
            return
        turn.audio_ms[msg.seq] = msg.audio_ms
        if msg.seq == 0:
            turn.mark("tts_first_audio", msg.first_audio_us)
            turn.provider_ms["tts"] = msg.provider_ttfb_ms


def _ids(msg: TtsError | SentenceSynthesized) -> tuple[int, int, int]:
    return msg.attempt, msg.turn_id, msg.seq
