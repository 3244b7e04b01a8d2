"""Per-call state: the reply side of turn-taking, what the caller heard, the lifecycle.

Turn ids only grow; everything of a reply carries its turn id, so cancelling a turn is
one broadcast that every service (and the gateway, last) applies to whatever it still
holds. The caller's side (end of turn, barge-in) lives in `turn_taking.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import msgspec

from proto import call_headers, subjects
from proto.messages import (
    BrainTurn,
    CallStart,
    ChatTurn,
    Dtmf,
    Hangup,
    MarkPlayed,
    Message,
    PlaybackPause,
    PlaybackResume,
    ReplyAudioSent,
    ReplyDone,
    ReplyError,
    ReplySentence,
    SentenceSynthesized,
    SpeechEnded,
    SpeechPaused,
    SpeechStarted,
    SttError,
    Synthesize,
    Transcript,
    Transfer,
    TtsError,
    TurnCancel,
    TurnKind,
)
from proto.records import CallRecord
from services.orchestrator.states import CallState
from services.orchestrator.timers import Timers
from services.orchestrator.turn import Turn
from services.orchestrator.turn_taking import TurnTaking
from voxline.agents import Agent
from voxline.bus import Bus
from voxline.config import OrchestratorSettings
from voxline.telemetry import current_call_id, now_us

log = logging.getLogger("voxline.orchestrator.call")

__all__ = ["Call", "CallState"]

# Replies in a row that TTS could not speak before the call is ended: a line that stays
# silent is worse than a clean hang-up.
MAX_SILENT_TURNS = 2


class Call:
    def __init__(
        self,
        bus: Bus,
        start: CallStart,
        agent: Agent,
        settings: OrchestratorSettings,
        traceparent: str,
        save: Callable[[CallRecord], Awaitable[None]],
        reassign_stt: Callable[[], Awaitable[bool]],
    ) -> None:
        self.bus = bus
        self.call_id = start.call_id
        self.agent = agent
        self.settings = settings
        self.state = CallState.LISTENING
        self.history: list[ChatTurn] = []
        self.turns: list[Turn] = []
        self.current: Turn | None = None
        self.timers = Timers()
        self.stt_provider_ms = 0.0
        self._next_turn_id = 1
        self._traceparent = traceparent
        self._save = save
        self._reassign_stt = reassign_stt
        self._latency_pending: float | None = None
        self._silent_turns = 0
        self.caller = TurnTaking(self)
        self.record = CallRecord(
            call_id=start.call_id,
            call_sid=start.call_sid,
            agent_id=start.agent_id,
            status="in-progress",
            started_at_us=start.started_at_us,
            from_number=start.from_number,
            to_number=start.to_number,
        )

    async def save_initial(self) -> None:
        await self._save(self.record)

    def take_turn_latency(self) -> float | None:
        """Seconds from caller speech end to first reply audio of a turn that just got
        its first audio out; each turn is reported once."""
        latency, self._latency_pending = self._latency_pending, None
        return latency

    # --- outgoing --------------------------------------------------------------------

    def _headers(self, turn_id: int | None = None) -> dict[str, str]:
        return call_headers(self.call_id, turn_id, self._traceparent)

    async def publish_control(self, message: PlaybackPause | PlaybackResume | Hangup | Transfer) -> None:
        turn_id = getattr(message, "turn_id", None)
        await self.bus.publish(subjects.control(self.call_id), message, self._headers(turn_id))

    def _new_turn(self, kind: TurnKind, caller_text: str = "") -> Turn:
        turn = Turn(turn_id=self._next_turn_id, kind=kind, caller_text=caller_text)
        self._next_turn_id += 1
        self.turns.append(turn)
        self.current = turn
        return turn

    async def _synthesize(self, turn: Turn, text: str, last: bool = False) -> None:
        seq = turn.next_seq
        turn.sentences[seq] = text
        at = now_us()
        if seq == 0:
            turn.mark("tts_request", at)
        if last:
            turn.closed = True
        msg = Synthesize(
            call_id=self.call_id,
            turn_id=turn.turn_id,
            seq=seq,
            text=text,
            voice=self.agent.voice,
            last=last,
            greeting=turn.kind == "greeting",
            requested_at_us=at,
        )
        await self._send_synthesize(turn, msg, retry=True)

    async def _send_synthesize(self, turn: Turn, msg: Synthesize, retry: bool) -> None:
        async def on_timeout() -> None:
            if not turn.active:
                return
            if retry:
                log.error("no TTS result for turn %d sentence %d; asking another worker", turn.turn_id, msg.seq)
                await self._send_synthesize(turn, msg, retry=False)
            else:
                log.error("TTS failed twice on turn %d sentence %d; skipping it", turn.turn_id, msg.seq)
                skip = Synthesize(**{**msgspec.structs.asdict(msg), "text": ""})
                await self.bus.publish(subjects.TTS_SYNTHESIZE, skip, self._headers(turn.turn_id))

        self.timers.start(("tts", turn.turn_id, msg.seq), self.settings.tts_timeout_s, on_timeout)
        await self.bus.publish(subjects.TTS_SYNTHESIZE, msg, self._headers(turn.turn_id))

    async def _speak(self, kind: TurnKind, text: str) -> Turn:
        """A turn that needs no brain: greeting, reprompt, apology, goodbye."""
        turn = self._new_turn(kind)
        turn.brain_done = True
        self.state = CallState.THINKING
        await self._synthesize(turn, text)
        await self._synthesize(turn, "", last=True)
        return turn

    async def greet(self, call_start_us: int) -> None:
        turn = await self._speak("greeting", self.agent.greeting)
        turn.mark("call_start", call_start_us)

    async def start_reply(self, caller_text: str, tentative: bool) -> Turn:
        """Ask the brain for an answer; a tentative one is held until `commit_reply`."""
        turn = self._new_turn("reply", caller_text=caller_text)
        turn.committed = not tentative
        turn.preemptive = tentative
        at = now_us()
        turn.mark("brain_request", at)
        request = BrainTurn(
            call_id=self.call_id,
            turn_id=turn.turn_id,
            agent_id=self.agent.id,
            history=list(self.history),
            user_text=caller_text,
            requested_at_us=at,
        )

        async def brain_timeout() -> None:
            await self._on_error(ReplyError(call_id=self.call_id, turn_id=turn.turn_id, message="brain timed out"))

        self.timers.start(("brain", turn.turn_id), self.settings.brain_timeout_s, brain_timeout)
        await self.bus.publish(subjects.BRAIN_TURN, request, self._headers(turn.turn_id))
        return turn

    async def commit_reply(self, turn: Turn, caller: TurnTaking) -> None:
        """The caller's turn ended: timings for the record, then release held sentences."""
        turn.committed = True
        turn.mark("speech_end", caller.speech_end_us)
        turn.mark("stt_final", caller.stt_final_us)
        turn.mark("end_of_turn", now_us())
        turn.provider_ms["stt"] = self.stt_provider_ms
        self.state = CallState.THINKING
        held, turn.held = turn.held, []
        for text in held:
            await self._synthesize(turn, text)
        if turn.brain_done and not turn.closed:
            await self._synthesize(turn, "", last=True)

    def _stop_timers(self, turn_id: int) -> None:
        self.timers.cancel_where(lambda key: isinstance(key, tuple) and key[1] == turn_id)

    async def cancel_turn(self, turn: Turn, reason: str, carry_text: bool) -> None:
        self._stop_timers(turn.turn_id)
        turn.cancelled = True
        turn.cancel_reason = reason
        await self.bus.publish(
            subjects.turn_cancel(self.call_id),
            TurnCancel(call_id=self.call_id, turn_id=turn.turn_id, reason=reason, at_us=now_us()),
            self._headers(turn.turn_id),
        )
        log.info("turn %d cancelled: %s", turn.turn_id, reason)
        if not turn.committed:
            return  # never heard, never an answer: the caller's words are still pending
        if turn.kind == "reply" and not turn.heard_text():
            # The caller never heard an answer: the question is still open, merge it
            # with what they say next.
            if carry_text:
                self.caller.parts.insert(0, turn.caller_text)
        else:
            await self._conclude(turn)

    async def _conclude(self, turn: Turn) -> None:
        """Put the turn into the history (only the heard part) and the call record."""
        if turn.caller_text:
            self.history.append(ChatTurn(role="user", content=turn.caller_text))
        heard = turn.heard_text()
        if heard:
            self.history.append(ChatTurn(role="assistant", content=heard))
        self.history = self.history[-2 * self.settings.history_turns :]
        self.record.turns.append(turn.record())
        await self._save(self.record)

    # --- incoming --------------------------------------------------------------------

    async def handle(self, message: Message) -> None:
        current_call_id.set(self.call_id)
        if self.state is CallState.ENDED:
            return
        match message:
            case SpeechStarted():
                await self.caller.on_speech_started(message)
            case Transcript():
                await self.caller.on_transcript(message)
            case SpeechEnded():
                await self.caller.on_speech_ended(message)
            case SpeechPaused():
                await self.caller.on_speech_paused(message)
            case Dtmf():
                await self.caller.on_dtmf(message)
            case ReplySentence():
                await self._on_sentence(message)
            case ReplyDone():
                await self._on_reply_done(message)
            case ReplyError() | SttError() | TtsError():
                await self._on_error(message)
            case SentenceSynthesized():
                self._on_synthesized(message)
            case ReplyAudioSent():
                self._on_audio_sent(message)
            case MarkPlayed():
                await self._on_mark(message)
            case _:
                log.debug("ignored %s", type(message).__name__)

    def _turn(self, turn_id: int) -> Turn | None:
        turn = self.current
        if turn is not None and turn.turn_id == turn_id and not turn.cancelled:
            return turn
        return None

    async def _on_sentence(self, msg: ReplySentence) -> None:
        turn = self._turn(msg.turn_id)
        if turn is None or turn.closed:
            return
        self.timers.cancel(("brain", turn.turn_id))
        if msg.seq == 0:
            turn.mark("first_token", msg.first_token_us or msg.at_us)
            turn.mark("first_sentence", msg.at_us)
            turn.provider_ms["llm"] = msg.provider_ms
        if turn.committed:
            await self._synthesize(turn, msg.text)
        else:
            turn.held.append(msg.text)

    async def _on_reply_done(self, msg: ReplyDone) -> None:
        turn = self._turn(msg.turn_id)
        if turn is None or turn.closed:
            return
        self.timers.cancel(("brain", turn.turn_id))
        turn.brain_done = True
        turn.action, turn.action_arg = msg.action, msg.action_arg
        if turn.committed:
            await self._synthesize(turn, "", last=True)

    async def _on_error(self, msg: ReplyError | SttError | TtsError) -> None:
        log.error("%s: %s", type(msg).__name__, msg.message)
        if isinstance(msg, ReplyError):
            turn = self._turn(msg.turn_id)
            if turn is not None and not turn.closed:
                self.timers.cancel(("brain", turn.turn_id))
                turn.brain_done = True
                turn.kind = "apology" if not turn.sentences and not turn.held else turn.kind
                if turn.committed:
                    await self._synthesize(turn, self.agent.apology)
                    await self._synthesize(turn, "", last=True)
                else:
                    turn.held.append(self.agent.apology)  # goes out with the commit
        elif isinstance(msg, TtsError):
            self.timers.cancel(("tts", msg.turn_id, msg.seq))
            failed = next((t for t in reversed(self.turns) if t.turn_id == msg.turn_id), None)
            if failed is not None:
                failed.failed.add(msg.seq)
        elif isinstance(msg, SttError):
            # The STT worker let the call go: find another, or end the call politely.
            if not await self._reassign_stt():
                await self.fail("speech recognition unavailable")

    async def fail(self, reason: str) -> None:
        """Tell the caller we cannot go on, then hang up once they heard it."""
        log.error("ending the call: %s", reason)
        turn = self.current
        if turn is not None and turn.active:
            await self.cancel_turn(turn, reason, carry_text=False)
        turn = await self._speak("failure", self.agent.failure_message)
        turn.action = "hangup"

    def _on_synthesized(self, msg: SentenceSynthesized) -> None:
        self.timers.cancel(("tts", msg.turn_id, msg.seq))
        turn = self._turn(msg.turn_id)
        if turn is None:
            return
        turn.audio_ms[msg.seq] = msg.audio_ms
        if msg.seq == 0:
            turn.mark("tts_first_audio", msg.first_audio_us)
            turn.provider_ms["tts"] = msg.provider_ttfb_ms

    def _on_audio_sent(self, msg: ReplyAudioSent) -> None:
        turn = self._turn(msg.turn_id)
        if turn is None:
            return
        turn.mark("first_media", msg.at_us)
        if "speech_end" in turn.times_us:
            self._latency_pending = (msg.at_us - turn.times_us["speech_end"]) / 1e6
        if self.state is CallState.THINKING:
            self.state = CallState.SPEAKING

    async def _on_mark(self, msg: MarkPlayed) -> None:
        turn = next((t for t in reversed(self.turns) if t.turn_id == msg.turn_id), None)
        if turn is None or turn.finished or turn.cancelled:
            return  # echoes of a cancelled turn are Twilio flushing marks on `clear`
        turn.heard_ms[msg.seq] = max(turn.heard_ms.get(msg.seq, 0), msg.end_ms)
        if msg.sentence_end:
            turn.sentence_heard.add(msg.seq)
        if not msg.turn_end:
            return
        turn.finished = True
        await self._conclude(turn)
        self._silent_turns = self._silent_turns + 1 if turn.unspoken() else 0
        if self._silent_turns >= MAX_SILENT_TURNS:
            log.error("%d replies in a row could not be spoken: hanging up", self._silent_turns)
            await self.hang_up("text to speech unavailable")
            return
        if turn.action == "hangup":
            await self.hang_up("agent ended the call")
            return
        if turn.action == "transfer" and turn.action_arg:
            await self.publish_control(Transfer(call_id=self.call_id, to=turn.action_arg, reason="agent transfer"))
            return
        if self.current is turn and self.state in (CallState.SPEAKING, CallState.THINKING):
            self.state = CallState.LISTENING
            self.start_idle_timer()

    # --- idle caller -----------------------------------------------------------------

    def start_idle_timer(self) -> None:
        options = self.agent.turn
        if self.caller.reprompted:
            self.timers.start("idle", max(0.0, options.idle_hangup_s - options.idle_reprompt_s), self._idle_hangup)
        else:
            self.timers.start("idle", options.idle_reprompt_s, self._idle_reprompt)

    async def _idle_reprompt(self) -> None:
        if self.state is CallState.LISTENING and not self.caller.speech_active:
            log.info("caller silent for %.0fs: reprompt", self.agent.turn.idle_reprompt_s)
            self.caller.reprompted = True
            await self._speak("reprompt", self.agent.turn.reprompt)

    async def _idle_hangup(self) -> None:
        if self.state is CallState.LISTENING and not self.caller.speech_active:
            log.info("caller silent for %.0fs: goodbye", self.agent.turn.idle_hangup_s)
            turn = await self._speak("goodbye", self.agent.goodbye)
            turn.action = "hangup"

    # --- lifecycle -------------------------------------------------------------------

    async def hang_up(self, reason: str) -> None:
        await self.publish_control(Hangup(call_id=self.call_id, reason=reason))

    async def end(self, reason: str) -> None:
        """The media stream is gone: cancel what is in flight and write the final record."""
        if self.state is CallState.ENDED:
            return
        self.timers.cancel_all()
        turn = self.current
        if turn is not None and turn.active and turn.committed:
            turn.cancelled = True
            turn.cancel_reason = "call_ended"
            self.record.turns.append(turn.record())
        self.state = CallState.ENDED
        self.record.status = "ended"
        self.record.end_reason = reason
        self.record.ended_at_us = now_us()
        await self._save(self.record)
