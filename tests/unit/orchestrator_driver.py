"""Drives the orchestrator's pure core (`core.step`) with event sequences, as the actor
would, without a bus: time is whatever the test says, timers fire when the test fires
them, and every effect is kept for the assertions."""

from __future__ import annotations

from typing import TypeVar

from proto.messages import (
    CallStart,
    Dtmf,
    MarkPlayed,
    Message,
    ReplyAudioSent,
    ReplyDone,
    ReplyProgress,
    ReplySentence,
    SentenceSynthesized,
    SpeechEnded,
    SpeechPaused,
    SpeechStarted,
    SynthesisProgress,
    Transcript,
    TtsError,
)
from services.orchestrator.call import Call, CallLimits, new_call
from services.orchestrator.core import step
from services.orchestrator.effects import Effect, Publish
from services.orchestrator.events import Event, Greet, TimerFired
from services.orchestrator.timers import PendingTimer, Timer, TimerKind
from services.orchestrator.turn import Turn
from voxline.agents import Agent
from voxline.agents.turn_options import TurnOptions

CALL_ID = "CA0123456789abcdef0123456789abcdef"
T0 = 1_800_000_000_000_000
GREETING = "Hello, how can I help?"
STT_PAUSE_MS = 200

M = TypeVar("M", bound=Message)


class Driver:
    def __init__(self, options: TurnOptions | None = None, limits: CallLimits | None = None) -> None:
        agent = Agent(
            id="test",
            name="Test",
            greeting=GREETING,
            system_prompt="You are a test agent.",
            turn=options or TurnOptions(),
        )
        start = CallStart(call_id=CALL_ID, agent_id="test", stream_sid="MZ1", call_sid=CALL_ID, started_at_us=T0)
        self.call: Call = new_call(start, agent, limits or CallLimits(), traceparent="")
        self.now_us = T0
        self.effects: list[Effect] = []

    # --- time and events ---------------------------------------------------------------

    def wait(self, ms: float) -> None:
        self.now_us += int(ms * 1000)

    def send(self, event: Event) -> list[Effect]:
        effects = step(self.call, event, self.now_us)
        self.effects += effects
        return effects

    def pending(self, kind: TimerKind, turn_id: int = 0, seq: int = 0) -> PendingTimer | None:
        return next((p for p in self.call.timers if p.timer == Timer(kind, turn_id, seq)), None)

    def fire(self, kind: TimerKind, turn_id: int = 0, seq: int = 0) -> list[Effect]:
        """The timer expires: time moves to its deadline and the shell's TimerFired arrives."""
        pending = self.pending(kind, turn_id, seq)
        assert pending is not None, f"no {kind} timer pending"
        self.now_us = max(self.now_us, pending.deadline_us)
        return self.send(TimerFired(pending.timer, pending.timer_id))

    def published(self, kind: type[M], effects: list[Effect] | None = None) -> list[M]:
        source = self.effects if effects is None else effects
        return [e.message for e in source if isinstance(e, Publish) and isinstance(e.message, kind)]

    @property
    def turn(self) -> Turn:
        assert self.call.current is not None
        return self.call.current

    # --- the caller (STT events) ---------------------------------------------------------

    def speech_started(self) -> list[Effect]:
        return self.send(SpeechStarted(call_id=CALL_ID, at_us=self.now_us))

    def speech_ended(self, eot_probability: float = -1.0) -> list[Effect]:
        end = self.now_us - STT_PAUSE_MS * 1000
        return self.send(
            SpeechEnded(call_id=CALL_ID, at_us=self.now_us, speech_end_us=end, end_of_turn_probability=eot_probability)
        )

    def final(self, text: str) -> list[Effect]:
        return self.send(Transcript(call_id=CALL_ID, text=text, is_final=True, at_us=self.now_us, provider_ms=15.0))

    def interim_pause(self, text: str) -> list[Effect]:
        return self.send(
            SpeechPaused(call_id=CALL_ID, at_us=self.now_us, speech_end_us=self.now_us - 80_000, text=text)
        )

    def says(self, text: str, ms: float = 1000) -> list[Effect]:
        """The caller says `text`: speech, the STT's end of speech, then its final."""
        effects = self.speech_started()
        self.wait(ms + STT_PAUSE_MS)
        effects += self.speech_ended()
        self.wait(20)
        return effects + self.final(text)

    def dtmf(self, digit: str) -> list[Effect]:
        return self.send(Dtmf(call_id=CALL_ID, digit=digit, at_us=self.now_us))

    # --- brain, TTS and gateway ----------------------------------------------------------

    def sentence(self, turn_id: int, seq: int, text: str, attempt: int = 0) -> list[Effect]:
        return self.send(
            ReplySentence(call_id=CALL_ID, turn_id=turn_id, seq=seq, text=text, at_us=self.now_us, attempt=attempt)
        )

    def brain_progress(self, turn_id: int, attempt: int = 0) -> list[Effect]:
        return self.send(ReplyProgress(call_id=CALL_ID, turn_id=turn_id, attempt=attempt, at_us=self.now_us))

    def done(self, turn_id: int, sentences: int, action: str = "", action_arg: str = "") -> list[Effect]:
        return self.send(
            ReplyDone(
                call_id=CALL_ID,
                turn_id=turn_id,
                sentences=sentences,
                at_us=self.now_us,
                action=action,  # type: ignore[arg-type]
                action_arg=action_arg,
            )
        )

    def synthesized(self, turn_id: int, seq: int, audio_ms: float = 1000.0, attempt: int = 0) -> list[Effect]:
        return self.send(
            SentenceSynthesized(
                call_id=CALL_ID,
                turn_id=turn_id,
                seq=seq,
                audio_ms=audio_ms,
                first_audio_us=self.now_us,
                at_us=self.now_us,
                attempt=attempt,
            )
        )

    def progress(self, turn_id: int, seq: int, chunks: int, attempt: int = 0) -> list[Effect]:
        return self.send(
            SynthesisProgress(
                call_id=CALL_ID, turn_id=turn_id, seq=seq, attempt=attempt, chunks=chunks, at_us=self.now_us
            )
        )

    def tts_error(self, turn_id: int, seq: int, attempt: int = 0) -> list[Effect]:
        return self.send(TtsError(call_id=CALL_ID, turn_id=turn_id, seq=seq, message="tts down", attempt=attempt))

    def audio_sent(self, turn_id: int) -> list[Effect]:
        return self.send(ReplyAudioSent(call_id=CALL_ID, turn_id=turn_id, at_us=self.now_us))

    def mark(
        self, turn_id: int, seq: int, end_ms: int, sentence_end: bool = False, turn_end: bool = False
    ) -> list[Effect]:
        return self.send(
            MarkPlayed(
                call_id=CALL_ID,
                turn_id=turn_id,
                seq=seq,
                chunk=0,
                end_ms=end_ms,
                sentence_end=sentence_end,
                turn_end=turn_end,
                at_us=self.now_us,
            )
        )

    def play(self, turn: Turn, to_end: bool = True) -> list[Effect]:
        """TTS speaks every sentence sent so far (1 s each) and the caller hears them all;
        with `to_end`, the turn's closing mark too."""
        effects = self.audio_sent(turn.turn_id)
        seqs = sorted(turn.sentences)
        for seq in seqs:
            ms = 1000.0 if turn.sentences[seq] else 0.0
            effects += self.synthesized(turn.turn_id, seq, ms)
            self.wait(ms)
            effects += self.mark(turn.turn_id, seq, int(ms), sentence_end=True, turn_end=to_end and seq == seqs[-1])
        return effects

    def greet(self) -> Turn:
        """The agent's greeting, played to the end: the caller's floor."""
        self.send(Greet(call_start_us=self.now_us))
        greeting = self.turn
        self.wait(300)
        self.play(greeting)
        return greeting

    def answered(self, question: str, reply: list[str]) -> Turn:
        """The caller asks, their turn ends, the brain answers with `reply`, TTS has it
        and the first audio went out: the agent is speaking, nothing heard yet."""
        self.says(question)
        while self.pending(TimerKind.END_OF_TURN):
            self.fire(TimerKind.END_OF_TURN)
        turn = self.turn
        assert turn.committed and turn.caller_text == question
        for seq, text in enumerate(reply):
            self.sentence(turn.turn_id, seq, text)
        self.done(turn.turn_id, len(reply))
        for seq, text in enumerate(reply):
            self.synthesized(turn.turn_id, seq, len(text) * 70.0)
        self.synthesized(turn.turn_id, len(reply), 0.0)
        self.audio_sent(turn.turn_id)
        return turn
