"""The caller's side of a call: when their turn ends, and what happens when they talk
over the agent.

End of turn: the STT reports a pause early (with Smart Turn's probability where it has
one); the words and the acoustics decide how much more silence to wait for, and with
`preemptive_reply` the brain starts at once while its audio waits for the end of turn.

Barge-in (`pause` mode): the voice stops at the caller's first sound (`clear`), before
anyone can know whether it is an interruption. Words that are not a backchannel, or
speech that goes on, confirm it and cancel the turn everywhere; a backchannel, a cough or
noise resumes the reply from the last chunk Twilio confirmed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from proto.messages import (
    Dtmf,
    PlaybackPause,
    PlaybackResume,
    SpeechEnded,
    SpeechPaused,
    SpeechStarted,
    Transcript,
)
from services.orchestrator.end_of_turn import decide, is_backchannel, same_words
from services.orchestrator.states import CallState
from services.orchestrator.turn import Turn
from voxline.telemetry import now_us

if TYPE_CHECKING:
    from services.orchestrator.call import Call

log = logging.getLogger("voxline.orchestrator.turns")

# If the STT reports the end of speech but no final transcript follows, end the turn
# with what was heard so far rather than leave the caller in silence.
FINAL_TRANSCRIPT_WAIT_S = 2.0
# No backchannel lasts this long: speech over the reply beyond it is an interruption.
OVERLAP_CONFIRM_MS = 1200


class TurnTaking:
    def __init__(self, call: Call) -> None:
        self.call = call
        self.options = call.agent.turn
        self.parts: list[str] = []  # final transcripts of the caller's current turn
        self.speech_active = False
        self.speech_end_us = 0
        self.speech_ended_at_us = 0
        self.eot_probability = -1.0
        self.stt_final_us = 0
        self.final_since_speech = False
        self.overlap: Turn | None = None  # the reply the caller is talking over
        self.parts_before_overlap = 0
        self.reprompted = False

    # --- events from the STT -----------------------------------------------------------

    async def on_speech_started(self, msg: SpeechStarted) -> None:
        call = self.call
        self.speech_active = True
        self.final_since_speech = False
        call.timers.cancel("end_of_turn")
        call.timers.cancel("final_transcript")
        call.timers.cancel("idle")
        self.reprompted = False
        turn = call.current
        if turn is None or not turn.active:
            call.state = CallState.CALLER_SPEAKING
            return
        if not turn.committed:
            # The caller went on after a pause: the preemptive reply was never heard.
            await call.cancel_turn(turn, "caller_continued", carry_text=False)
            call.state = CallState.CALLER_SPEAKING
            return
        if self.overlap is not None:
            return
        mode = self.options.barge_in
        self.overlap = turn
        self.parts_before_overlap = len(self.parts)
        if mode == "pause":
            await call.publish_control(PlaybackPause(call_id=call.call_id, turn_id=turn.turn_id, at_us=now_us()))
            call.state = CallState.PAUSED
            confirm_ms = OVERLAP_CONFIRM_MS
        else:
            confirm_ms = self.options.keep_talking_min_speech_ms if mode == "keep_talking" else 0
        if confirm_ms:
            call.timers.start("overlap", confirm_ms / 1000, self._speech_went_on)

    async def _speech_went_on(self) -> None:
        if self.overlap is not None and self.speech_active:
            await self.confirm_interruption("speech went on")

    async def on_transcript(self, msg: Transcript) -> None:
        text = msg.text.strip()
        if msg.is_final:
            if text:
                self.parts.append(text)
            self.final_since_speech = True
            self.stt_final_us = msg.at_us
            self.call.stt_provider_ms = msg.provider_ms
        if self.overlap is not None and text and not is_backchannel(text, self.options):
            await self.confirm_interruption(f"caller said {text[:40]!r}")
        if msg.is_final and not self.speech_active:
            await self._caller_paused()

    async def on_speech_ended(self, msg: SpeechEnded) -> None:
        self.speech_active = False
        self.speech_end_us = msg.speech_end_us
        self.speech_ended_at_us = msg.at_us
        self.eot_probability = msg.end_of_turn_probability
        if self.final_since_speech:
            await self._caller_paused()
        else:
            self.call.timers.start("final_transcript", FINAL_TRANSCRIPT_WAIT_S, self._no_final_transcript)

    async def on_speech_paused(self, msg: SpeechPaused) -> None:
        """A streaming recogniser's interim text covers all the caller said and they went
        quiet: the brain starts now, ~200 ms before the final transcript. The final (or
        more speech) decides whether this reply is the one the caller hears."""
        call = self.call
        if not self.options.preemptive_reply or self.overlap is not None:
            return
        current = call.current
        if current is not None and current.active:
            return  # a reply is already thinking or playing: this pause is not a new turn
        text = " ".join([*self.parts, msg.text.strip()]).strip()
        if text:
            log.info("caller paused with interim words: preemptive reply")
            await call.start_reply(text, tentative=True)

    async def _no_final_transcript(self) -> None:
        log.warning("no final transcript %.1fs after speech end; going on with what was heard", FINAL_TRANSCRIPT_WAIT_S)
        self.stt_final_us = now_us()
        self.call.stt_provider_ms = 0.0
        self.final_since_speech = True
        await self._caller_paused()

    async def on_dtmf(self, msg: Dtmf) -> None:
        call = self.call
        call.timers.cancel("idle")
        if not self.options.dtmf_ends_turn:
            return
        turn = call.current
        if turn is not None and turn.active:
            await call.cancel_turn(turn, "dtmf", carry_text=True)
        self.overlap = None
        self.parts.append(f"(The caller pressed {msg.digit} on the keypad.)")
        self.speech_end_us = self.speech_ended_at_us = self.stt_final_us = msg.at_us
        call.stt_provider_ms = 0.0
        await self.commit()

    # --- decisions ---------------------------------------------------------------------

    async def _caller_paused(self) -> None:
        """The caller is silent and we have their words so far: decide what it means."""
        self.final_since_speech = False
        call = self.call
        call.timers.cancel("final_transcript")
        if self.overlap is not None:
            heard = " ".join(self.parts[self.parts_before_overlap :])
            if heard and not is_backchannel(heard, self.options):
                await self.confirm_interruption(f"caller said {heard[:40]!r}")
            else:
                await self.resume(heard or "noise")
                return
        text = " ".join(self.parts)
        if not text:
            call.state = CallState.LISTENING
            call.start_idle_timer()
            return
        decision = decide(text, self.eot_probability, self.options)
        waited_ms = (now_us() - self.speech_end_us) / 1000
        remaining_ms = decision.silence_ms - waited_ms
        log.info(
            "caller paused: score %.2f (%s), end of turn after %d ms of silence",
            decision.score,
            "complete" if decision.complete else "incomplete",
            decision.silence_ms,
        )
        if self.options.preemptive_reply and remaining_ms > 0:
            current = call.current
            if current is None or not current.active or current.committed:
                await call.start_reply(text, tentative=True)
        if remaining_ms <= 0:
            await self.commit()
        else:
            call.timers.start("end_of_turn", remaining_ms / 1000, self.commit)

    async def commit(self) -> None:
        """The caller's turn is over: the reply (already thinking, if preemptive) goes out."""
        call = self.call
        call.timers.cancel("end_of_turn")
        text = " ".join(self.parts)
        self.parts = []
        if not text:
            return
        turn = call.current
        if turn is not None and turn.active and not turn.committed:
            if same_words(turn.caller_text, text):  # an interim may differ in case and punctuation
                turn.caller_text = text
                await call.commit_reply(turn, self)
                return
            await call.cancel_turn(turn, "transcript_changed", carry_text=False)
        turn = await call.start_reply(text, tentative=False)
        await call.commit_reply(turn, self)

    async def confirm_interruption(self, why: str) -> None:
        turn, self.overlap = self.overlap, None
        self.call.timers.cancel("overlap")
        if turn is None or not turn.active:
            return
        log.info("barge-in on turn %d confirmed: %s", turn.turn_id, why)
        await self.call.cancel_turn(turn, "barge_in", carry_text=True)
        self.call.state = CallState.CALLER_SPEAKING if self.speech_active else CallState.LISTENING

    async def resume(self, what: str) -> None:
        call = self.call
        turn, self.overlap = self.overlap, None
        call.timers.cancel("overlap")
        del self.parts[self.parts_before_overlap :]
        if turn is None or not turn.active:
            return
        turn.paused += 1
        log.info("not an interruption (%s): turn %d plays on", what, turn.turn_id)
        if self.options.barge_in == "pause":
            await call.publish_control(PlaybackResume(call_id=call.call_id, turn_id=turn.turn_id, at_us=now_us()))
        call.state = CallState.SPEAKING if "first_media" in turn.times_us else CallState.THINKING
