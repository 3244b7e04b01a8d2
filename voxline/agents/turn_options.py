"""Turn-taking and barge-in options of an agent, with their defaults in one table.

| option | default | meaning |
|---|---|---|
| `stt_pause_ms` | 200 | silence after which the STT reports the end of speech (the orchestrator then decides) |
| `complete_silence_ms` | 250 | silence that ends a turn that sounds complete |
| `incomplete_silence_ms` | 1500 | silence that ends a turn that sounds unfinished ("I need to cancel my…") |
| `complete_threshold` | 0.5 | combined end-of-turn score at or above which a turn counts as complete |
| `acoustic_weight` | 0.4 | weight of the acoustic model (Smart Turn) against the transcript score |
| `preemptive_reply` | true | start the brain when the caller pauses; its audio waits for the end of turn |
| `barge_in` | `"pause"` | `pause`: stop at once, resume after a backchannel; `keep_talking`: talk through short sounds; `words_only`: only recognised words interrupt (speakerphone echo) |
| `keep_talking_min_speech_ms` | 600 | in `keep_talking`: speech this long (or real words) interrupts |
| `backchannels` | uh-huh, yeah, okay, … | utterances that never interrupt or get an answer |
| `idle_reprompt_s` | 8.0 | caller silent this long after the agent finished: a reprompt |
| `idle_hangup_s` | 20.0 | caller silent this long: a polite goodbye and hang-up |
| `reprompt` | "Are you still there?" | what the reprompt says |
| `dtmf_ends_turn` | true | a keypad digit ends the caller's turn at once |

The transcript's own score (0 = certainly unfinished, 1 = certainly finished), one value per
kind of ending; `end_of_turn.transcript_score` says which applies:

| option | default | the caller's words so far… |
|---|---|---|
| `score_cut_off` | 0.1 | end on a word no sentence ends on ("and", "the", "my", "to") or on "…", "-", "," |
| `score_filler` | 0.15 | end on a filler ("um", "uh", "er") |
| `score_partial_number` | 0.2 | dictate a number with fewer than 10 digits |
| `score_full_number` | 0.8 | dictate a number with 10 or more digits |
| `score_short_answer` | 0.9 | are a short answer or polite closing ("No.", "Thank you.", "Yes please.") |
| `score_question` | 0.95 | end with a question mark ("What about you?") |
| `score_question_words` | 0.85 | start like a question and have three words or more |
| `score_sentence_end` | 0.8 | end with "." or "!" |
| `score_open_ending` | 0.45 | end without punctuation on a word that may or may not close a sentence ("I need", "Can you") |
| `score_few_words` | 0.75 | are one or two words, unpunctuated |
| `score_other` | 0.6 | anything else |
| `acoustic_veto_margin` | 0.2 | on a cut-off or filler ending the combined score stays within this of the words' score, however sure the acoustic model is |
"""

from __future__ import annotations

from typing import Literal

import msgspec

DEFAULT_BACKCHANNELS = [
    "uh-huh",
    "uh huh",
    "mm-hmm",
    "mhm",
    "hmm",
    "mm",
    "yeah",
    "yep",
    "yes",
    "ok",
    "okay",
    "right",
    "sure",
    "alright",
    "all right",
    "i see",
    "got it",
    "cool",
    "great",
]


class TurnOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    stt_pause_ms: int = 200
    complete_silence_ms: int = 250
    incomplete_silence_ms: int = 1500
    complete_threshold: float = 0.5
    acoustic_weight: float = 0.4
    preemptive_reply: bool = True
    barge_in: Literal["pause", "keep_talking", "words_only"] = "pause"
    keep_talking_min_speech_ms: int = 600
    backchannels: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_BACKCHANNELS))
    idle_reprompt_s: float = 8.0
    idle_hangup_s: float = 20.0
    reprompt: str = "Are you still there?"
    dtmf_ends_turn: bool = True
    score_cut_off: float = 0.1
    score_filler: float = 0.15
    score_partial_number: float = 0.2
    score_full_number: float = 0.8
    score_short_answer: float = 0.9
    score_question: float = 0.95
    score_question_words: float = 0.85
    score_sentence_end: float = 0.8
    score_open_ending: float = 0.45
    score_few_words: float = 0.75
    score_other: float = 0.6
    acoustic_veto_margin: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.complete_silence_ms <= self.incomplete_silence_ms:
            raise ValueError("need 0 < complete_silence_ms <= incomplete_silence_ms")
        if not 0.0 <= self.acoustic_weight <= 1.0:
            raise ValueError("acoustic_weight is a weight between 0 and 1")
        scores = [getattr(self, name) for name in self.__struct_fields__ if name.startswith("score_")]
        if not all(0.0 <= score <= 1.0 for score in [*scores, self.complete_threshold, self.acoustic_veto_margin]):
            raise ValueError("scores, complete_threshold and acoustic_veto_margin lie between 0 and 1")
        if self.idle_hangup_s < self.idle_reprompt_s:
            raise ValueError("idle_hangup_s must not be shorter than idle_reprompt_s")
