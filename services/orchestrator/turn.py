"""One turn of the agent in a call: its sentences, what the caller actually heard, its
timings. Part of the call's serialisable state."""

from __future__ import annotations

import msgspec

from proto.messages import AgentAction, ToolCallReport, TurnKind
from proto.records import TurnRecord

# About 12 characters a second: slower than phone voices speak (~15), so a length
# estimated from the text errs towards "not heard yet".
SLOW_SPEECH_MS_PER_CHAR = 85.0


class Turn(msgspec.Struct, kw_only=True):
    turn_id: int
    kind: TurnKind
    caller_text: str = ""
    sentences: dict[int, str] = {}
    audio_ms: dict[int, float] = {}  # per sentence, from TTS
    heard_ms: dict[int, int] = {}  # per sentence, from mark echoes
    sentence_heard: set[int] = set()  # sentences played to the end
    failed: set[int] = set()  # sentences TTS could not speak (or that were skipped)
    attempts: dict[int, int] = {}  # per sentence, the newest synthesis attempt sent
    brain_done: bool = False
    brain_attempt: int = 0  # the brain request's try (BrainTurn.attempt): replies of older ones are dropped
    closed: bool = False  # the end-of-turn marker was sent to TTS
    finished: bool = False  # Twilio played the whole reply
    cancelled: bool = False
    cancel_reason: str = ""
    committed: bool = True  # False while a preemptive reply waits for the end of turn
    preemptive: bool = False
    continues: int = 0  # the turn cut by a break whose rest this turn says
    held: list[str] = []  # sentences of an uncommitted reply
    paused: int = 0  # times the caller talked over it without interrupting
    action: AgentAction = ""
    action_arg: str = ""
    times_us: dict[str, int] = {}
    provider_ms: dict[str, float] = {}
    tool_calls: list[ToolCallReport] = []  # the brain's report of the reply's tool calls
    dtmf: str = ""  # a dtmf turn's keys

    @property
    def next_seq(self) -> int:
        return len(self.sentences)

    @property
    def active(self) -> bool:
        return not (self.finished or self.cancelled)

    def mark(self, name: str, at_us: int) -> None:
        self.times_us.setdefault(name, at_us)

    def talked_over(self, onset_us: int) -> None:
        """The caller's speech began at `onset_us` (the audio's arrival) over this turn; it
        counts for barge-in only once the voice plays, and until the voice is stopped."""
        if "first_media" in self.times_us and "voice_stop" not in self.times_us:
            self.times_us["barge_in_onset"] = onset_us

    def voice_stopped(self, at_us: int) -> None:
        """The order that stops the voice (pause or cancel, then the gateway's `clear`)."""
        if "barge_in_onset" in self.times_us:
            self.mark("voice_stop", at_us)

    def unspoken(self) -> bool:
        """Every sentence with words failed in TTS: the caller heard silence."""
        spoken = [seq for seq, text in self.sentences.items() if text]
        return bool(spoken) and all(seq in self.failed for seq in spoken)

    def open_question(self) -> str:
        """The caller's words of a committed reply they heard none of: cancelled now, it
        answered nothing, so the question is still open and goes with what they say next."""
        if self.committed and self.kind == "reply" and not self.heard_text():
            return self.caller_text
        return ""

    def unheard(self) -> list[str]:
        """The sentences the caller did not hear to the end, in order, a partly heard one
        whole: what a reply cut by a break (a broken stream, a takeover) still has to say."""
        return [
            text
            for seq, text in sorted(self.sentences.items())
            if text and seq not in self.sentence_heard and seq not in self.failed
        ]

    def reply_text(self) -> str:
        return " ".join(self.sentences[s] for s in sorted(self.sentences) if self.sentences[s])

    def heard_text(self) -> str:
        """The reply cut at the last word the caller heard, from the mark echoes.

        A sentence whose last mark was echoed was heard whole; a partly played one is cut
        in proportion to the audio played, at a word boundary; nothing after a sentence
        that was not (fully) heard counts."""
        heard: list[str] = []
        for seq in sorted(self.sentences):
            text = self.sentences[seq]
            if seq in self.failed:
                continue  # its closing mark echoes, but no voice was ever played
            if seq in self.sentence_heard:
                if text:
                    heard.append(text)
                continue
            played = self.heard_ms.get(seq, 0)
            total = self.audio_ms.get(seq, 0.0)
            if total <= 0:
                # Still being synthesized (a streaming TTS sends audio as fast as it
                # speaks): estimate its length from the text, at a slow speaking rate, so
                # words the caller may not have heard are never counted as heard.
                total = len(text) * SLOW_SPEECH_MS_PER_CHAR
            if played > 0 and total > 0 and text:
                words = text.split()
                keep = min(len(words), int(len(words) * min(1.0, played / total)))
                if keep:
                    heard.append(" ".join(words[:keep]))
            break
        return " ".join(heard)

    def latency_ms(self) -> dict[str, float]:
        """Stage breakdown in pipeline order, measured from the caller's end of speech."""
        t = self.times_us
        out: dict[str, float] = {}
        start = t.get("speech_end")

        def span(name: str, a: str, b: str) -> None:
            if a in t and b in t:
                out[name] = round((t[b] - t[a]) / 1000.0, 1)

        span("end_of_turn", "speech_end", "end_of_turn")
        span("stt_final", "speech_end", "stt_final")
        span("llm_first_token", "brain_request", "first_token")
        span("llm_first_sentence", "brain_request", "first_sentence")
        span("tts_first_audio", "tts_request", "tts_first_audio")
        span("barge_in_voice_stop", "barge_in_onset", "voice_stop")
        if start is not None:
            span("first_media_sent", "speech_end", "first_media")
        else:
            span("first_media_sent", "call_start", "first_media")
        if start is not None and {"first_media", "end_of_turn", "brain_request"} <= t.keys():
            # What the reply would have taken if every hop were free: the end-of-turn wait
            # (silence, STT, policy) or the brain's own time from its request, whichever
            # ends later (a preemptive brain overlaps the wait), then TTS's own time.
            eot_wait = (t["end_of_turn"] - start) / 1000
            brain_ready = (t["brain_request"] - start) / 1000 + self.provider_ms.get("llm", 0.0)
            ideal = max(eot_wait, brain_ready) + self.provider_ms.get("tts", 0.0)
            out["pipeline_overhead"] = round(out["first_media_sent"] - ideal, 1)
        out.update(self._hops_ms())
        return out

    def _hops_ms(self) -> dict[str, float]:
        """Where the pipeline overhead goes: each hop's transit beyond its provider's time.

        hop_brain: the request's way to the brain and the first sentence's way out, less the
        LLM's own time; hop_orchestrator: from the first sentence (or the end of turn, if
        later: a preemptive reply waits for it) to the TTS request; hop_tts: the request's
        way to TTS and its first audio's publish, less the TTS provider's time; hop_gateway:
        from that publish to the first media frame sent to Twilio. Each stamp is taken by
        the process that did the work, so a hop includes one NATS transit and a dispatch.
        """
        t, provider = self.times_us, self.provider_ms
        out: dict[str, float] = {}
        if {"brain_request", "first_sentence"} <= t.keys() and "llm" in provider:
            out["hop_brain"] = round((t["first_sentence"] - t["brain_request"]) / 1000 - provider["llm"], 2)
        if {"first_sentence", "end_of_turn", "tts_request"} <= t.keys():
            ready = max(t["first_sentence"], t["end_of_turn"])
            out["hop_orchestrator"] = round((t["tts_request"] - ready) / 1000, 2)
        if {"tts_request", "tts_first_audio"} <= t.keys() and "tts" in provider:
            out["hop_tts"] = round((t["tts_first_audio"] - t["tts_request"]) / 1000 - provider["tts"], 2)
        if {"tts_first_audio", "first_media"} <= t.keys():
            out["hop_gateway"] = round((t["first_media"] - t["tts_first_audio"]) / 1000, 2)
        return out

    def record(self) -> TurnRecord:
        return TurnRecord(
            turn_id=self.turn_id,
            kind=self.kind,
            caller_text=self.caller_text,
            reply_text=self.reply_text(),
            heard_text=self.heard_text(),
            interrupted=self.cancelled,
            cancel_reason=self.cancel_reason,
            paused=self.paused,
            preemptive=self.preemptive,
            continues=self.continues,
            latency=self.latency_ms(),
            tool_calls=self.tool_calls,
            dtmf=self.dtmf,
        )
