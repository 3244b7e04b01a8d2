"""Has the caller finished? A transcript score combined with the acoustic model's.

Silence alone cuts off people who pause mid-sentence and keeps quick talkers waiting.
The acoustic model (Smart Turn, reported by the STT with the end of speech) hears
intonation but scores a cut-off "I need to cancel my…" as complete; the words catch what
it misses: trailing conjunctions and articles, fillers, a phone number half dictated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from voxline.agents.turn_options import TurnOptions

_TRAILING_INCOMPLETE = frozenset(
    "and or but so because then the a an my your our their his her its this that these those to of for with "
    "in on at from about into by as if when while than like is are was were be been am i we you he she they "
    "it's i'm i'd i'll can could would should will want need have has had do does did not no just very really "
    "please also plus".split()
)
_FILLERS = frozenset("um uh er erm ah hmm mm well so like".split())
_QUESTION_START = frozenset(
    "what when where who whom whose why how which is are do does did can could would will should may have has".split()
)
_NUMBER_CONTEXT = re.compile(r"\b(number|phone|zip|postal|code|card|account|digits?|extension)\b")
_WORD = re.compile(r"[a-z0-9']+")


def transcript_score(text: str) -> float:
    """0 (certainly unfinished) .. 1 (certainly finished), from the words alone."""
    stripped = text.strip()
    if not stripped:
        return 0.5
    if stripped.endswith(("...", "…", "-", ",")):
        return 0.1
    words = _WORD.findall(stripped.lower())
    if not words:
        return 0.5
    last = words[-1]
    if last in _FILLERS:
        return 0.15
    if last in _TRAILING_INCOMPLETE:
        return 0.1
    if last.isdigit() and _NUMBER_CONTEXT.search(stripped.lower()):
        digits = sum(len(w) for w in words if w.isdigit())
        return 0.2 if digits < 10 else 0.8
    if stripped.endswith("?"):
        return 0.95
    if words[0] in _QUESTION_START and len(words) >= 3:
        return 0.85
    if stripped.endswith((".", "!")):
        return 0.8
    if len(words) <= 2:
        return 0.75
    return 0.6


@dataclass(frozen=True, slots=True)
class EndOfTurnDecision:
    score: float
    complete: bool
    silence_ms: int  # how long after the end of speech the turn ends, if the caller stays silent


def decide(text: str, acoustic_probability: float, options: TurnOptions) -> EndOfTurnDecision:
    words = transcript_score(text)
    if acoustic_probability >= 0:
        w = options.acoustic_weight
        score = w * acoustic_probability + (1 - w) * words
        # The words veto a confident acoustic "done" on an obviously cut-off sentence.
        if words <= 0.15:
            score = min(score, words + 0.2)
    else:
        score = words
    complete = score >= options.complete_threshold
    if complete:
        silence = options.complete_silence_ms
    else:
        shortfall = (options.complete_threshold - score) / options.complete_threshold
        span = options.incomplete_silence_ms - options.complete_silence_ms
        silence = options.complete_silence_ms + int(span * min(1.0, 0.5 + shortfall))
    return EndOfTurnDecision(score=round(score, 3), complete=complete, silence_ms=silence)


def is_backchannel(text: str, options: TurnOptions) -> bool:
    """ "uh-huh", "okay, right": acknowledgements that ask for no answer and interrupt nothing."""
    normalized = " ".join(_WORD.findall(text.lower().replace("-", " ")))
    if not normalized:
        return False
    phrases = {" ".join(_WORD.findall(b.lower().replace("-", " "))) for b in options.backchannels}
    if normalized in phrases:
        return True
    single = {p for p in phrases if " " not in p}
    return all(word in single for word in normalized.split()) and len(normalized.split()) <= 3


def same_words(a: str, b: str) -> bool:
    """The same words, whatever the case and punctuation: an interim transcript and the
    final one often differ only in those."""
    return _WORD.findall(a.lower()) == _WORD.findall(b.lower())
