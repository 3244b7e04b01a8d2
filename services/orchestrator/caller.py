"""The caller's side of a call: when their turn ends, and what happens when they talk
over the agent.

End of turn: the STT reports a pause early (with Smart Turn's probability where it has
one); the words and the acoustics decide how much more silence to wait for, and with
`preemptive_reply` the brain starts at once while its audio waits for the end of turn.

Barge-in (`pause` mode): the voice stops at the caller's first sound (`clear`), before
anyone can know whether it is an interruption. Words that are not a backchannel, or
speech that goes on, confirm it and cancel the turn everywhere; a backchannel, a cough or
noise resumes the reply from the last chunk Twilio confirmed. A backchannel is such only
over the agent's voice: the same "uh-huh" once the agent finished (after a question, say)
is the caller's turn and gets an answer.

This side reads the agent's current reply (`ReplyView`, read-only) and its own state, and
returns intents (`intents.py`) for the call's core to carry out; it changes nothing else.
"""

from __future__ import annotations

import logging
from typing import Protocol

import msgspec

from proto.messages import Dtmf, SpeechEnded, SpeechPaused, SpeechStarted, Transcript
from services.orchestrator.end_of_turn import decide, is_backchannel, same_words
from services.orchestrator.intents import (
    Arm,
    CallerTalking,
    Cancel,
    Commit,
    Disarm,
    Intent,
    Listen,
    Pause,
    Resume,
    StartTentative,
)
from services.orchestrator.timers import TimerKind
from voxline.agents.turn_options import TurnOptions

log = logging.getLogger("voxline.orchestrator.turns")

# If the STT reports the end of speech but no final transcript follows, end the turn
# with what was heard so far rather than leave the caller in silence.
FINAL_TRANSCRIPT_WAIT_S = 2.0
# No backchannel lasts this long: speech over the reply beyond it is an interruption.
OVERLAP_CONFIRM_MS = 1200

CALLER_TIMERS = frozenset({TimerKind.END_OF_TURN, TimerKind.FINAL_TRANSCRIPT, TimerKind.OVERLAP})


class ReplyView(Protocol):
    """What the caller's side may know of the agent's current turn (`turn.Turn`)."""

    @property
    def turn_id(self) -> int: ...
    @property
    def committed(self) -> bool: ...
    @property
    def caller_text(self) -> str: ...
    @property
    def active(self) -> bool: ...
    def open_question(self) -> str: ...


class CallerState(msgspec.Struct, kw_only=True):
    parts: list[str] = []  # final transcripts of the caller's current turn
    speech_active: bool = False
    speech_end_us: int = 0
    speech_ended_at_us: int = 0
    eot_probability: float = -1.0
    stt_final_us: int = 0
    stt_provider_ms: float = 0.0
    final_since_speech: bool = False
    overlap_turn_id: int = 0  # the reply the caller is talking over; 0 = none
    parts_before_overlap: int = 0


CallerEvent = SpeechStarted | Transcript | SpeechEnded | SpeechPaused | Dtmf | TimerKind


def hear(
    state: CallerState, event: CallerEvent, reply: ReplyView | None, options: TurnOptions, now_us: int
) -> list[Intent]:
    """Handle one event of the caller (or the expiry of one of `CALLER_TIMERS`)."""
    side = _CallerSide(state, reply, options, now_us)
    match event:
        case SpeechStarted():
            side.on_speech_started()
        case Transcript():
            side.on_transcript(event)
        case SpeechEnded():
            side.on_speech_ended(event)
        case SpeechPaused():
            side.on_speech_paused(event)
        case Dtmf():
            side.on_dtmf(event)
        case TimerKind.END_OF_TURN:
            side.commit()
        case TimerKind.FINAL_TRANSCRIPT:
            side.no_final_transcript()
        case TimerKind.OVERLAP:
            side.speech_went_on()
    return side.intents


class _CallerSide:
    def __init__(self, state: CallerState, reply: ReplyView | None, options: TurnOptions, now_us: int) -> None:
        self.s = state
        self.reply = reply if reply is not None and reply.active else None  # None once we cancel it
        self.options = options
        self.now_us = now_us
        self.intents: list[Intent] = []

    def _cancel(self, reply: ReplyView, reason: str, carry_text: bool) -> None:
        self.intents.append(Cancel(reply.turn_id, reason))
        if carry_text:
            # The caller never heard an answer: the question is still open, merge it with
            # what they say next.
            question = reply.open_question()
            if question:
                self.s.parts.insert(0, question)
        self.reply = None

    # --- events from the STT -----------------------------------------------------------

    def on_speech_started(self) -> None:
        s = self.s
        s.speech_active = True
        s.final_since_speech = False
        self.intents += [Disarm(TimerKind.END_OF_TURN), Disarm(TimerKind.FINAL_TRANSCRIPT)]
        reply = self.reply
        if reply is None:
            self.intents.append(CallerTalking())
            return
        if not reply.committed:
            # The caller went on after a pause: the preemptive reply was never heard.
            self._cancel(reply, "caller_continued", carry_text=False)
            self.intents.append(CallerTalking())
            return
        if s.overlap_turn_id:
            return
        mode = self.options.barge_in
        s.overlap_turn_id = reply.turn_id
        s.parts_before_overlap = len(s.parts)
        if mode == "pause":
            self.intents.append(Pause(reply.turn_id))
            confirm_ms = OVERLAP_CONFIRM_MS
        else:
            confirm_ms = self.options.keep_talking_min_speech_ms if mode == "keep_talking" else 0
        if confirm_ms:
            self.intents.append(Arm(TimerKind.OVERLAP, confirm_ms / 1000))

    def speech_went_on(self) -> None:
        if self.s.overlap_turn_id and self.s.speech_active:
            self.confirm_interruption("speech went on")

    def on_transcript(self, msg: Transcript) -> None:
        s = self.s
        text = msg.text.strip()
        if msg.is_final:
            if text:
                s.parts.append(text)
            s.final_since_speech = True
            s.stt_final_us = msg.at_us
            s.stt_provider_ms = msg.provider_ms
        if s.overlap_turn_id and text and not is_backchannel(text, self.options):
            self.confirm_interruption(f"caller said {text[:40]!r}")
        if msg.is_final and not s.speech_active:
            self._caller_paused()

    def on_speech_ended(self, msg: SpeechEnded) -> None:
        s = self.s
        s.speech_active = False
        s.speech_end_us = msg.speech_end_us
        s.speech_ended_at_us = msg.at_us
        s.eot_probability = msg.end_of_turn_probability
        if s.final_since_speech:
            self._caller_paused()
        else:
            self.intents.append(Arm(TimerKind.FINAL_TRANSCRIPT, FINAL_TRANSCRIPT_WAIT_S))

    def on_speech_paused(self, msg: SpeechPaused) -> None:
        """A streaming recogniser's interim text covers all the caller said and they went
        quiet: the brain starts now, ~200 ms before the final transcript. The final (or
        more speech) decides whether this reply is the one the caller hears."""
        if not self.options.preemptive_reply or self.s.overlap_turn_id:
            return
        if self.reply is not None:
            return  # a reply is already thinking or playing: this pause is not a new turn
        text = " ".join([*self.s.parts, msg.text.strip()]).strip()
        if text:
            log.info("caller paused with interim words: preemptive reply")
            self.intents.append(StartTentative(text))

    def no_final_transcript(self) -> None:
        log.warning("no final transcript %.1fs after speech end; going on with what was heard", FINAL_TRANSCRIPT_WAIT_S)
        s = self.s
        s.stt_final_us = self.now_us
        s.stt_provider_ms = 0.0
        s.final_since_speech = True
        self._caller_paused()

    def on_dtmf(self, msg: Dtmf) -> None:
        if not self.options.dtmf_ends_turn:
            return
        s = self.s
        if self.reply is not None:
            self._cancel(self.reply, "dtmf", carry_text=True)
        s.overlap_turn_id = 0
        s.parts.append(f"(The caller pressed {msg.digit} on the keypad.)")
        s.speech_end_us = s.speech_ended_at_us = s.stt_final_us = msg.at_us
        s.stt_provider_ms = 0.0
        self.commit()

    # --- decisions ---------------------------------------------------------------------

    def _caller_paused(self) -> None:
        """The caller is silent and we have their words so far: decide what it means."""
        s = self.s
        s.final_since_speech = False
        self.intents.append(Disarm(TimerKind.FINAL_TRANSCRIPT))
        if s.overlap_turn_id:
            heard = " ".join(s.parts[s.parts_before_overlap :])
            if heard and not is_backchannel(heard, self.options):
                self.confirm_interruption(f"caller said {heard[:40]!r}")
            else:
                self.resume(heard or "noise")
                return
        text = " ".join(s.parts)
        if not text:
            if self.reply is None or not self.reply.committed:
                self.intents.append(Listen(idle=True))
            # else a reply (to a keypad digit, say) is on its way: the floor is the agent's
            return
        decision = decide(text, s.eot_probability, self.options)
        waited_ms = (self.now_us - s.speech_end_us) / 1000
        remaining_ms = decision.silence_ms - waited_ms
        log.info(
            "caller paused: score %.2f (%s), end of turn after %d ms of silence",
            decision.score,
            "complete" if decision.complete else "incomplete",
            decision.silence_ms,
        )
        if self.options.preemptive_reply and remaining_ms > 0:
            if self.reply is None or self.reply.committed:
                self.intents.append(StartTentative(text))
        if remaining_ms <= 0:
            self.commit()
        else:
            self.intents.append(Arm(TimerKind.END_OF_TURN, remaining_ms / 1000))

    def commit(self) -> None:
        """The caller's turn is over: the reply (already thinking, if preemptive) goes out."""
        s = self.s
        self.intents.append(Disarm(TimerKind.END_OF_TURN))
        text = " ".join(s.parts)
        s.parts = []
        if not text:
            return
        reply = self.reply
        if reply is not None and not reply.committed:
            if same_words(reply.caller_text, text):  # an interim may differ in case and punctuation
                self.intents.append(self._commit(text, reply.turn_id))
                return
            self._cancel(reply, "transcript_changed", carry_text=False)
        self.intents.append(self._commit(text, 0))

    def _commit(self, text: str, turn_id: int) -> Commit:
        s = self.s
        return Commit(
            text=text,
            turn_id=turn_id,
            speech_end_us=s.speech_end_us,
            stt_final_us=s.stt_final_us,
            stt_provider_ms=s.stt_provider_ms,
        )

    def confirm_interruption(self, why: str) -> None:
        turn_id, self.s.overlap_turn_id = self.s.overlap_turn_id, 0
        self.intents.append(Disarm(TimerKind.OVERLAP))
        reply = self.reply
        if reply is None or reply.turn_id != turn_id:
            return
        log.info("barge-in on turn %d confirmed: %s", turn_id, why)
        self._cancel(reply, "barge_in", carry_text=True)
        self.intents.append(CallerTalking() if self.s.speech_active else Listen(idle=False))

    def resume(self, what: str) -> None:
        s = self.s
        turn_id, s.overlap_turn_id = s.overlap_turn_id, 0
        self.intents.append(Disarm(TimerKind.OVERLAP))
        del s.parts[s.parts_before_overlap :]
        reply = self.reply
        if reply is None or reply.turn_id != turn_id:
            return
        log.info("not an interruption (%s): turn %d plays on", what, turn_id)
        self.intents.append(Resume(turn_id))
