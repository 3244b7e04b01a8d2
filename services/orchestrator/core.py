"""The core of a call: `step` handles one event of a call (`call.Call`, its whole state)
and returns what to do about it.

`step` reads no clock and does no I/O: the actor's shell stamps the time into each step
and carries out the effects (publish, timers, record writes). Events are handled one at a
time, so nothing interleaves with a half-done cancel, and a snapshot of `Call`
(`msgspec.json.encode`) is everything another orchestrator needs to go on with the call.

Turn ids only grow; everything of a reply carries its turn id, so cancelling a turn is
one broadcast that every service (and the gateway, last) applies to whatever it still
holds. The caller's side (end of turn, barge-in) is `caller.py`: it returns intents,
which `_Step.apply` carries out here.
"""

from __future__ import annotations

import logging

from proto import subjects
from proto.messages import (
    CallStopped,
    ChatTurn,
    Dtmf,
    Hangup,
    MarkPlayed,
    PlaybackPause,
    PlaybackResume,
    ReplyAudioSent,
    ReplyDone,
    ReplyError,
    ReplyProgress,
    ReplySentence,
    SentenceSynthesized,
    SpeechEnded,
    SpeechPaused,
    SpeechStarted,
    StreamResume,
    SttError,
    SynthesisProgress,
    Transcript,
    Transfer,
    TtsError,
    TurnCancel,
    TurnKind,
)
from services.orchestrator import costs, dtmf, intents
from services.orchestrator.call import Call
from services.orchestrator.caller import CALLER_TIMERS, CallerEvent, hear
from services.orchestrator.effects import Effect, ReassignStt, SaveRecord
from services.orchestrator.events import Event, Greet, Resumed, SttLost, SttReassigned, TimerFired
from services.orchestrator.reply import Reply
from services.orchestrator.states import CallState
from services.orchestrator.timers import Timer, TimerKind
from services.orchestrator.turn import Turn
from voxline.agents.variables import render

log = logging.getLogger("voxline.orchestrator.call")

# Replies in a row that TTS could not speak before the call is ended: a line that stays
# silent is worse than a clean hang-up.
MAX_SILENT_TURNS = 2
# A resumed call's turn ids jump by this much: turns the last owner started after its last
# snapshot are below the jump, so one cancel reaches all of them and no new turn reuses an id.
RESUME_TURN_ID_GAP = 100
RECENT_STT_EVENTS = 16  # kept in the call's state, to know a replayed STT event
# The maximum call length's goodbye: the hang-up reason, and how long it may take to be heard.
TIME_LIMIT_REASON = "maximum call length reached"
TIME_LIMIT_GRACE_S = 15.0
# How long a call whose media stream broke waits for Twilio to come back with a new one
# (the `<Connect action>` is requested at once; a gateway answers it within a second).
STREAM_RESUME_WAIT_S = 10.0


def step(call: Call, event: Event, now_us: int) -> list[Effect]:
    """Handle one event at `now_us`: `call` is updated in place (it is the actor's own
    value; copying it per event would cost more than the rest of the step) and the effects
    are returned, in the order they must happen."""
    if call.state is CallState.ENDED:
        return []
    s = _Step(call, now_us)
    s.handle(event)
    return s.effects


class _Step(Reply):
    """One event's handling: the reply side of the call, intents of the caller's side,
    the idle caller and the call's lifecycle. Sentences and their watchdogs: `Speech`."""

    def handle(self, event: Event) -> None:
        call = self.call
        if isinstance(event, SpeechStarted | Transcript | SpeechEnded | SpeechPaused):
            if event.at_us <= call.resumed_at_us and event in call.recent_stt:
                return  # from before the takeover, and replayed: handled already
            call.recent_stt = [*call.recent_stt[-(RECENT_STT_EVENTS - 1) :], event]
            if isinstance(event, Transcript) and event.is_final:
                call.finals_heard += 1
        match event:
            case SpeechStarted() | Dtmf():
                self.cancel_timer(Timer(TimerKind.IDLE))
                if isinstance(event, SpeechStarted):
                    call.reprompted = False
                self.caller_event(event)
            case Transcript() | SpeechEnded() | SpeechPaused():
                self.caller_event(event)
            case TimerFired():
                self._on_timer(event)
            case ReplyProgress():
                self.on_brain_progress(event)
            case ReplySentence():
                self.on_sentence(event)
            case ReplyDone():
                self.on_reply_done(event)
            case ReplyError():
                self.on_reply_error(event)
            case SttError():
                log.error("SttError: %s", event.message)
                self.effects.append(ReassignStt())  # the STT worker let the call go: find another
            case SttReassigned(ok=False):
                self.fail("speech recognition unavailable")
            case SttLost():
                self.fail(event.reason)
            case TtsError():
                self.on_tts_error(event)
            case SentenceSynthesized():
                self.on_synthesized(event)
            case SynthesisProgress():
                self.on_tts_progress(event)
            case ReplyAudioSent():
                self._on_audio_sent(event)
            case MarkPlayed():
                self._on_mark(event)
            case Greet():
                turn = self.speak("greeting", call.agent.greeting)
                turn.mark("call_start", event.call_start_us)
                elapsed_s = max(0, self.now_us - event.call_start_us) / 1e6
                self.start_timer(Timer(TimerKind.MAX_CALL), max(0.0, call.agent.max_call_s - elapsed_s))
            case CallStopped() if event.stream_sid and event.stream_sid != call.stream_sid:
                log.info("end of a replaced media stream ignored (%s)", event.reason)
            case CallStopped() if event.lost:
                self._stream_lost(event.reason)
            case CallStopped():
                self._end(event.reason)
            case StreamResume():
                self._stream_resumed(event)
            case Resumed():
                log.warning("call resumed from its saved state (last owner: %s)", event.previous_owner or "handed over")
                call.resumed_at_us = self.now_us
                self._take_back("orchestrator failover")
            case _:
                log.debug("ignored %s", type(event).__name__)

    # --- the caller's side -------------------------------------------------------------

    def caller_event(self, event: CallerEvent) -> None:
        call = self.call
        if isinstance(event, SpeechStarted) and call.current is not None and call.current.active:
            call.current.talked_over(event.at_us)
        for intent in hear(call.caller, event, call.current, call.agent.turn, self.now_us):
            self.apply(intent)

    def apply(self, intent: intents.Intent) -> None:
        call = self.call
        match intent:
            case intents.Cancel():
                turn = self.turn_by_id(intent.turn_id)
                if turn is not None and turn.active:
                    if intent.reason == "barge_in":
                        turn.voice_stopped(self.now_us)
                    self.cancel_turn(turn, intent.reason)
            case intents.Pause():
                if (paused := self.turn_by_id(intent.turn_id)) is not None:
                    paused.voice_stopped(self.now_us)
                self.control(PlaybackPause(call_id=call.call_id, turn_id=intent.turn_id, at_us=self.now_us))
                self.go(CallState.PAUSED)
            case intents.Resume():
                turn = self.turn_by_id(intent.turn_id)
                if turn is None or not turn.active:
                    return
                turn.paused += 1
                if call.agent.turn.barge_in == "pause":
                    self.control(PlaybackResume(call_id=call.call_id, turn_id=turn.turn_id, at_us=self.now_us))
                self.go(CallState.SPEAKING if "first_media" in turn.times_us else CallState.THINKING)
            case intents.StartTentative():
                self.start_reply(intent.text, tentative=True)
            case intents.Commit():
                tentative = self.live_turn(intent.turn_id) if intent.turn_id else None
                if tentative is not None and not tentative.committed:
                    tentative.caller_text = intent.text
                    self.commit_reply(tentative, intent)
                else:
                    self.commit_reply(self.start_reply(intent.text, tentative=False), intent)
            case intents.CallerTalking():
                self.go(CallState.CALLER_SPEAKING)
            case intents.Listen():
                self.go(CallState.LISTENING)
                if intent.idle:
                    self.start_idle_timer()
            case intents.Arm():
                self.start_timer(Timer(intent.kind), intent.seconds)
            case intents.Disarm():
                self.cancel_timer(Timer(intent.kind))

    def _on_timer(self, event: TimerFired) -> None:
        pending = next((p for p in self.call.timers if p.timer == event.timer), None)
        if pending is None or pending.timer_id != event.timer_id:
            return  # cancelled or restarted after this expiry was queued
        self.call.timers.remove(pending)
        timer = event.timer
        if timer.kind in CALLER_TIMERS:
            self.caller_event(timer.kind)
        elif timer.kind is TimerKind.IDLE:
            self._on_idle()
        elif timer.kind is TimerKind.BRAIN:
            self.on_brain_silent(timer.turn_id)
        elif timer.kind is TimerKind.TTS:
            self.on_tts_timeout(timer.turn_id, timer.seq)
        elif timer.kind is TimerKind.MAX_CALL:
            self._on_time_limit(timer.seq)
        elif timer.kind is TimerKind.STREAM_LOST:
            log.error("the media stream did not come back in %.0fs: the call ends", STREAM_RESUME_WAIT_S)
            self._end(self.call.stream_lost)

    # --- the reply -----------------------------------------------------------------------

    def cancel_turn(self, turn: Turn, reason: str) -> None:
        call = self.call
        self.cancel_timers_of(turn.turn_id)
        turn.cancelled = True
        turn.cancel_reason = reason
        cancel = TurnCancel(call_id=call.call_id, turn_id=turn.turn_id, reason=reason, at_us=self.now_us)
        self.publish(subjects.turn_cancel(call.call_id), cancel, turn.turn_id)
        log.info("turn %d cancelled: %s", turn.turn_id, reason)
        if not turn.committed:
            return  # never heard, never an answer: the caller's words are still pending
        if turn.open_question():
            return  # the caller heard no answer: their question stays open (caller.py)
        self._conclude(turn)

    def _conclude(self, turn: Turn) -> None:
        """Put the turn into the history (only the heard part) and the call record."""
        call = self.call
        if turn.caller_text:
            call.history.append(ChatTurn(role="user", content=turn.caller_text))
        heard = turn.heard_text()
        if heard:
            call.history.append(ChatTurn(role="assistant", content=heard))
        call.history = call.history[-2 * call.limits.history_turns :]
        call.record.turns.append(turn.record())
        self.effects.append(SaveRecord(call.record))

    def _on_audio_sent(self, msg: ReplyAudioSent) -> None:
        turn = self.live_turn(msg.turn_id)
        if turn is None:
            return
        turn.mark("first_media", msg.at_us)
        if self.call.state is CallState.THINKING:
            self.go(CallState.SPEAKING)

    def _on_mark(self, msg: MarkPlayed) -> None:
        call = self.call
        turn = self.turn_by_id(msg.turn_id)
        if turn is None or turn.finished or turn.cancelled:
            return  # echoes of a cancelled turn are Twilio flushing marks on `clear`
        turn.heard_ms[msg.seq] = max(turn.heard_ms.get(msg.seq, 0), msg.end_ms)
        if msg.sentence_end:
            turn.sentence_heard.add(msg.seq)
        if not msg.turn_end:
            return
        turn.finished = True
        self._conclude(turn)
        call.silent_turns = call.silent_turns + 1 if turn.unspoken() else 0
        if call.silent_turns >= MAX_SILENT_TURNS:
            log.error("%d replies in a row could not be spoken: hanging up", call.silent_turns)
            self.control(Hangup(call_id=call.call_id, reason="text to speech unavailable"))
            return
        if self.act(turn.action, turn.action_arg):
            return
        if call.current is turn and call.state in (CallState.SPEAKING, CallState.THINKING):
            self.go(CallState.LISTENING)
            self.start_idle_timer()

    def act(self, action: str, arg: str) -> bool:
        """What a reply's end orders, once it was heard; False when it orders nothing."""
        if action == "hangup":
            self.control(Hangup(call_id=self.call.call_id, reason=arg or "agent ended the call"))
            return True
        if action == "transfer" and arg:
            self.control(Transfer(call_id=self.call.call_id, to=arg, reason="agent transfer"))
            return True
        if action == "dtmf" and arg:
            dtmf.press(self, arg)  # a turn of keypad tones; the call listens after them
            return True
        return False

    def _stream_lost(self, reason: str) -> None:
        """The stream broke without Twilio's `stop`: the caller may still be there, and
        Twilio requests the `<Connect action>`, which hands out a new stream on a gateway
        that is up. Wait for it; the call ends if none comes."""
        call = self.call
        log.warning("media stream lost (%s): waiting %.0fs for a new one", reason, STREAM_RESUME_WAIT_S)
        if not call.stream_lost:
            self.start_timer(Timer(TimerKind.STREAM_LOST), STREAM_RESUME_WAIT_S)
        call.stream_lost = reason

    def _stream_resumed(self, event: StreamResume) -> None:
        """A new stream of the call, on `event.gateway_id`: its playback starts empty, so the
        reply that was on its way is given up and an unanswered question asked again."""
        call = self.call
        log.warning("media stream resumed on gateway %s after: %s", event.gateway_id, call.stream_lost or "a break")
        self.cancel_timer(Timer(TimerKind.STREAM_LOST))
        call.stream_lost = ""
        call.stream_sid = event.stream_sid
        call.record.stream_resumes += 1
        self._take_back("media stream resumed")

    def _take_back(self, reason: str) -> None:
        """Go on after a break (a takeover from a snapshot, a new media stream): the reply
        in flight is given up (what the caller heard of it stays in the history), anything
        started since is cancelled, and a question the caller heard no answer to is asked
        again at once."""
        call = self.call
        turn = call.current
        question, commit = "", None
        rest: list[str] = []
        if turn is not None and turn.active:
            question = turn.open_question()
            if turn.committed and not question and turn.brain_done:
                rest = turn.unheard()
            commit = intents.Commit(
                text=question,
                speech_end_us=turn.times_us.get("speech_end", self.now_us),
                stt_final_us=turn.times_us.get("stt_final", self.now_us),
                stt_provider_ms=turn.provider_ms.get("stt", 0.0),
            )
            self.cancel_timers_of(turn.turn_id)
            turn.cancelled = True
            turn.cancel_reason = reason
            if turn.committed and not question:
                self._conclude(turn)
        call.next_turn_id += RESUME_TURN_ID_GAP
        cancel = TurnCancel(call_id=call.call_id, turn_id=call.next_turn_id - 1, reason=reason, at_us=self.now_us)
        self.publish(subjects.turn_cancel(call.call_id), cancel)
        if question and commit is not None:
            self.commit_reply(self.start_reply(question, tentative=False), commit)
        elif call.state is CallState.CALLER_SPEAKING:
            pass  # the caller has the floor: what they say next is answered
        elif turn is not None and turn.cancel_reason == reason and (rest or turn.action):
            self._go_on_with(turn, rest)
        else:
            self.go(CallState.LISTENING)
            self.start_idle_timer()
        self.effects.append(SaveRecord(call.record))

    def _go_on_with(self, cut: Turn, rest: list[str]) -> None:
        """The caller heard part of a reply before the break: the rest of it is said on
        (the sentence they were in, again whole), and its action (hang up, transfer) kept."""
        if not rest:
            self.act(cut.action, cut.action_arg)
            return
        turn = self.new_turn(cut.kind)
        turn.brain_done, turn.continues = True, cut.turn_id
        turn.action, turn.action_arg = cut.action, cut.action_arg
        self.go(CallState.THINKING)
        for text in rest:
            self.synthesize(turn, text)
        self.synthesize(turn, "", last=True)

    # --- idle caller, failures, the end -------------------------------------------------

    def start_idle_timer(self) -> None:
        options = self.call.agent.turn
        if self.call.reprompted:
            self.start_timer(Timer(TimerKind.IDLE), max(0.0, options.idle_hangup_s - options.idle_reprompt_s))
        else:
            self.start_timer(Timer(TimerKind.IDLE), options.idle_reprompt_s)

    def _on_time_limit(self, seq: int) -> None:
        """The agent's maximum call length: say goodbye over whatever is going on, and hang
        up once it was heard; if it cannot be heard within the grace, hang up anyway."""
        call = self.call
        if seq == 0:
            log.warning("maximum call length (%.0fs) reached: goodbye", call.agent.max_call_s)
            turn = call.current
            if turn is not None and turn.active:
                self.cancel_turn(turn, "max_call_length")
            goodbye = self.speak("goodbye", call.agent.time_limit_message)
            goodbye.action, goodbye.action_arg = "hangup", TIME_LIMIT_REASON
            self.start_timer(Timer(TimerKind.MAX_CALL, seq=1), TIME_LIMIT_GRACE_S)
        else:
            log.error("the time-limit goodbye was not heard in %.0fs: hanging up", TIME_LIMIT_GRACE_S)
            self.control(Hangup(call_id=call.call_id, reason=TIME_LIMIT_REASON))

    def _on_idle(self) -> None:
        call = self.call
        if call.state is not CallState.LISTENING or call.caller.speech_active:
            return
        options = call.agent.turn
        if not call.reprompted:
            log.info("caller silent for %.0fs: reprompt", options.idle_reprompt_s)
            call.reprompted = True
            self.speak("reprompt", options.reprompt)
        else:
            log.info("caller silent for %.0fs: goodbye", options.idle_hangup_s)
            self.speak("goodbye", call.agent.goodbye).action = "hangup"

    def speak(self, kind: TurnKind, text: str) -> Turn:
        """A turn that needs no brain: greeting, reprompt, apology, goodbye. The agent's
        text with the call's variables in its placeholders."""
        turn = self.new_turn(kind)
        turn.brain_done = True
        self.go(CallState.THINKING)
        self.synthesize(turn, render(text, self.call.variables()))
        self.synthesize(turn, "", last=True)
        return turn

    def fail(self, reason: str) -> None:
        """Tell the caller we cannot go on, then hang up once they heard it."""
        log.error("ending the call: %s", reason)
        turn = self.call.current
        if turn is not None and turn.active:
            self.cancel_turn(turn, reason)
        self.speak("failure", self.call.agent.failure_message).action = "hangup"

    def _end(self, reason: str) -> None:
        """The media stream is gone: cancel what is in flight and write the final record."""
        call = self.call
        for pending in list(call.timers):
            self.cancel_timer(pending.timer)
        turn = call.current
        if turn is not None and turn.active and turn.committed:
            turn.cancelled = True
            turn.cancel_reason = "call_ended"
            call.record.turns.append(turn.record())
        self.go(CallState.ENDED)
        call.record.status = "ended"
        call.record.end_reason = reason
        call.record.ended_at_us = self.now_us
        costs.call_ended(call.record.costs, call.record.started_at_us, call.record.ended_at_us)
        self.effects.append(SaveRecord(call.record))

    # --- helpers -------------------------------------------------------------------------

    def control(self, message: PlaybackPause | PlaybackResume | Hangup | Transfer) -> None:
        turn_id = message.turn_id if isinstance(message, PlaybackPause | PlaybackResume) else None
        self.publish(subjects.control(self.call.call_id), message, turn_id)
