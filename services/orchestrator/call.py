"""Per-call state: turn-taking, barge-in, what the caller heard, the call's lifecycle.

The call moves listening -> caller_speaking -> thinking -> speaking -> listening. Turn ids
only grow; everything of a reply carries its turn id, so cancelling a turn is one
broadcast that every service (and the gateway, last) applies to whatever it still holds.
"""

from __future__ import annotations

import enum
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
    ReplyAudioSent,
    ReplyDone,
    ReplyError,
    ReplySentence,
    SentenceSynthesized,
    SpeechEnded,
    SpeechStarted,
    SttError,
    Synthesize,
    Transcript,
    TtsError,
    TurnCancel,
)
from proto.records import CallRecord
from services.orchestrator.timers import Timers
from services.orchestrator.turn import Turn
from voxline.agents import Agent
from voxline.bus import Bus
from voxline.config import OrchestratorSettings
from voxline.telemetry import current_call_id, now_us

log = logging.getLogger("voxline.orchestrator.call")

# If the STT reports the end of speech but no final transcript follows, end the turn
# with what was heard so far rather than leave the caller in silence.
FINAL_TRANSCRIPT_WAIT_S = 2.0


class CallState(enum.StrEnum):
    LISTENING = "listening"
    CALLER_SPEAKING = "caller_speaking"
    THINKING = "thinking"
    SPEAKING = "speaking"
    ENDED = "ended"


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
        self.state = CallState.LISTENING
        self.history: list[ChatTurn] = []
        self.settings = settings
        self.history_turns = settings.history_turns
        self._reassign_stt = reassign_stt
        self.timers = Timers()
        self.turns: list[Turn] = []
        self.current: Turn | None = None
        self._next_turn_id = 1
        self._traceparent = traceparent
        self._save = save
        self._caller_text: list[str] = []
        self._speech_end_us = 0
        self._speech_ended_at_us = 0
        self._stt_final_us = 0
        self._stt_provider_ms = 0.0
        self._speech_ended = False
        self._final_since_speech = False
        self._latency_pending: float | None = None
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

    def _new_turn(self, kind: str, caller_text: str = "") -> Turn:
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

    async def _speak(self, kind: str, text: str) -> Turn:
        """A turn that needs no brain: greeting, apology, goodbye."""
        turn = self._new_turn(kind)
        turn.brain_done = True
        self.state = CallState.THINKING
        await self._synthesize(turn, text)
        await self._synthesize(turn, "", last=True)
        return turn

    async def greet(self, call_start_us: int) -> None:
        turn = await self._speak("greeting", self.agent.greeting)
        turn.mark("call_start", call_start_us)

    def _stop_timers(self, turn_id: int) -> None:
        self.timers.cancel_where(lambda key: isinstance(key, tuple) and key[1] == turn_id)

    async def _cancel(self, turn: Turn, reason: str) -> None:
        self._stop_timers(turn.turn_id)
        turn.cancelled = True
        turn.cancel_reason = reason
        await self.bus.publish(
            subjects.turn_cancel(self.call_id),
            TurnCancel(call_id=self.call_id, turn_id=turn.turn_id, reason=reason, at_us=now_us()),
            self._headers(turn.turn_id),
        )
        log.info("turn %d cancelled: %s", turn.turn_id, reason)
        heard = turn.heard_text()
        if turn.kind == "reply" and not heard:
            # The caller never heard an answer: the question is still open, merge it
            # with what they say next.
            self._caller_text.insert(0, turn.caller_text)
        else:
            await self._conclude(turn)

    async def _conclude(self, turn: Turn) -> None:
        """Put the turn into the history (only the heard part) and the call record."""
        if turn.caller_text:
            self.history.append(ChatTurn(role="user", content=turn.caller_text))
        heard = turn.heard_text()
        if heard:
            self.history.append(ChatTurn(role="assistant", content=heard))
        self.history = self.history[-2 * self.history_turns :]
        self.record.turns.append(turn.record())
        await self._save(self.record)

    # --- incoming --------------------------------------------------------------------

    async def handle(self, message: Message) -> None:
        current_call_id.set(self.call_id)
        if self.state is CallState.ENDED:
            return
        match message:
            case SpeechStarted():
                await self._on_speech_started(message)
            case Transcript():
                await self._on_transcript(message)
            case SpeechEnded():
                await self._on_speech_ended(message)
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
            case Dtmf():
                await self._on_dtmf(message)
            case _:
                log.debug("ignored %s", type(message).__name__)

    def _turn(self, turn_id: int) -> Turn | None:
        turn = self.current
        if turn is not None and turn.turn_id == turn_id and not turn.cancelled:
            return turn
        return None

    async def _on_speech_started(self, msg: SpeechStarted) -> None:
        self._speech_ended = False
        self._final_since_speech = False
        self.timers.cancel("final_transcript")
        turn = self.current
        if turn is not None and turn.active and self.state in (CallState.THINKING, CallState.SPEAKING):
            await self._cancel(turn, "barge_in")
        self.state = CallState.CALLER_SPEAKING

    async def _on_transcript(self, msg: Transcript) -> None:
        if not msg.is_final:
            return
        if msg.text.strip():
            self._caller_text.append(msg.text.strip())
        self._final_since_speech = True
        self._stt_final_us = msg.at_us
        self._stt_provider_ms = msg.provider_ms
        if self._speech_ended:
            await self._end_of_turn()

    async def _on_speech_ended(self, msg: SpeechEnded) -> None:
        self._speech_ended = True
        self._speech_end_us = msg.speech_end_us
        self._speech_ended_at_us = msg.at_us
        if self._final_since_speech:
            await self._end_of_turn()
        else:
            self.timers.start("final_transcript", FINAL_TRANSCRIPT_WAIT_S, self._end_of_turn_without_final)

    async def _end_of_turn_without_final(self) -> None:
        log.warning(
            "no final transcript %.1fs after speech end; ending the turn with what was heard", FINAL_TRANSCRIPT_WAIT_S
        )
        self._stt_final_us = now_us()
        self._stt_provider_ms = 0.0
        await self._end_of_turn()

    async def _end_of_turn(self) -> None:
        self.timers.cancel("final_transcript")
        self._speech_ended = False
        self._final_since_speech = False
        text = " ".join(t for t in self._caller_text if t)
        self._caller_text = []
        if not text:
            self.state = CallState.LISTENING
            return
        turn = self._new_turn("reply", caller_text=text)
        at = now_us()
        turn.mark("speech_end", self._speech_end_us)
        turn.mark("stt_final", self._stt_final_us)
        turn.mark("end_of_turn", at)
        turn.provider_ms["end_of_turn_silence"] = (self._speech_ended_at_us - self._speech_end_us) / 1000.0
        turn.provider_ms["stt"] = self._stt_provider_ms
        self.state = CallState.THINKING
        request = BrainTurn(
            call_id=self.call_id,
            turn_id=turn.turn_id,
            agent_id=self.agent.id,
            history=list(self.history),
            user_text=text,
            requested_at_us=at,
        )
        turn.mark("brain_request", at)

        async def brain_timeout() -> None:
            await self._on_error(ReplyError(call_id=self.call_id, turn_id=turn.turn_id, message="brain timed out"))

        self.timers.start(("brain", turn.turn_id), self.settings.brain_timeout_s, brain_timeout)
        await self.bus.publish(subjects.BRAIN_TURN, request, self._headers(turn.turn_id))

    async def _on_sentence(self, msg: ReplySentence) -> None:
        turn = self._turn(msg.turn_id)
        if turn is None or turn.closed:
            return
        self.timers.cancel(("brain", turn.turn_id))
        if msg.seq == 0:
            turn.mark("first_token", msg.first_token_us or msg.at_us)
            turn.mark("first_sentence", msg.at_us)
            turn.provider_ms["llm"] = msg.provider_ms
        await self._synthesize(turn, msg.text)

    async def _on_reply_done(self, msg: ReplyDone) -> None:
        turn = self._turn(msg.turn_id)
        if turn is None or turn.closed:
            return
        self.timers.cancel(("brain", turn.turn_id))
        turn.brain_done = True
        turn.action, turn.action_arg = msg.action, msg.action_arg
        await self._synthesize(turn, "", last=True)

    async def _on_error(self, msg: ReplyError | SttError | TtsError) -> None:
        log.error("%s: %s", type(msg).__name__, msg.message)
        if isinstance(msg, ReplyError):
            turn = self._turn(msg.turn_id)
            if turn is not None and not turn.closed:
                self.timers.cancel(("brain", turn.turn_id))
                turn.brain_done = True
                turn.kind = "apology" if not turn.sentences else turn.kind
                await self._synthesize(turn, self.agent.apology)
                await self._synthesize(turn, "", last=True)
        elif isinstance(msg, TtsError):
            self.timers.cancel(("tts", msg.turn_id, msg.seq))
        elif isinstance(msg, SttError):
            # The STT worker let the call go: find another, or end the call politely.
            if not await self._reassign_stt():
                await self.fail("speech recognition unavailable")

    async def fail(self, reason: str) -> None:
        """Tell the caller we cannot go on, then hang up once they heard it."""
        log.error("ending the call: %s", reason)
        turn = self.current
        if turn is not None and turn.active:
            await self._cancel(turn, reason)
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
        if msg.turn_end and not turn.cancelled:
            turn.finished = True
            await self._conclude(turn)
            if self.current is turn and self.state is CallState.SPEAKING:
                self.state = CallState.LISTENING
            if turn.action == "hangup":
                await self.hang_up("agent ended the call")

    async def _on_dtmf(self, msg: Dtmf) -> None:
        log.info("dtmf %s", msg.digit)
        if self.state is CallState.LISTENING:
            self._caller_text.append(f"(The caller pressed {msg.digit} on the keypad.)")
            self._speech_end_us = self._speech_ended_at_us = self._stt_final_us = msg.at_us
            self._stt_provider_ms = 0.0
            await self._end_of_turn()

    async def hang_up(self, reason: str) -> None:
        await self.bus.publish(
            subjects.control(self.call_id), Hangup(call_id=self.call_id, reason=reason), self._headers()
        )

    async def end(self, reason: str) -> None:
        """The media stream is gone: cancel what is in flight and write the final record."""
        if self.state is CallState.ENDED:
            return
        self.timers.cancel_all()
        turn = self.current
        if turn is not None and turn.active:
            turn.cancelled = True
            turn.cancel_reason = "call_ended"
            self.record.turns.append(turn.record())
        self.state = CallState.ENDED
        self.record.status = "ended"
        self.record.end_reason = reason
        self.record.ended_at_us = now_us()
        await self._save(self.record)
