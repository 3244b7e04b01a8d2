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

# Words no sentence ends on: an utterance ending on one was cut off, punctuated or not.
_CUT_OFF_ENDINGS = frozenset(
    "and or but because the a an my your our their its to of for with from into by as if when while than "
    "is are was were am i we he she they it's i'm i'd i'll i've we're they're just very also plus about".split()
)
# Words that end complete sentences ("I think so.", "Thank you.", "Yes I can.") as often as
# unfinished ones ("I need", "Can you"): the recogniser's full stop decides, and without one
# the acoustic model does.
_OPEN_ENDINGS = frozenset(
    "so then that this these those in on at like be been can could would should will want need have "
    "has had do does did not no you please really well his her".split()
)
_FILLERS = frozenset("um uh er erm ah hmm mm".split())
_QUESTION_START = frozenset(
    "what when where who whom whose why how which is are do does did can could would will should may have has".split()
)
# Whole answers and closings, compared word for word after leading interjections; two of
# them in a row ("No, thank you.", "Okay, bye.") count as one.
_SHORT_ANSWERS = frozenset(
    {
        *"no yes yeah yep yup nope nah sure okay ok right correct exactly fine great perfect thanks please "
        "bye goodbye alright absolutely definitely maybe hello hi".split(),
        "thank you",
        "thank you very much",
        "thanks a lot",
        "no thanks",
        "no thank you",
        "yes please",
        "that's all",
        "that's it",
        "that's all i need",
        "that's right",
        "nothing else",
        "not really",
        "not at all",
        "no problem",
        "of course",
        "bye bye",
        "you too",
        "me too",
        "same to you",
        "and you",
        "what about you",
        "how about you",
        "sounds good",
        "all right",
        "i think so",
        "i guess so",
        "i don't think so",
        "i hope so",
        *(f"i {verb}" for verb in "do don't did didn't can can't will won't have haven't am".split()),
    }
)
_INTERJECTIONS = frozenset("oh ah um uh well".split())
_NUMBER_CONTEXT = re.compile(r"\b(number|phone|zip|postal|code|card|account|digits?|extension)\b")
_WORD = re.compile(r"[a-z0-9']+")


# "uh-huh", "mm-hmm", "uh-uh", "mhm", "unh-hunh": sounds, not words, however the recogniser
# spells them (Whisper heard a caller's "uh-huh" as "Uh-uh."). Only h, m, n and the vowels
# a and u, with an h or an m; the few real words of that shape are listed apart.
_VOCABLE = re.compile(r"^(?=[a-z]*[hm])[hmnua]{1,8}$")
_NOT_VOCABLES = frozenset("a an am man ham hun nun human mama".split())


def _vocable(word: str) -> bool:
    return bool(_VOCABLE.match(word)) and word not in _NOT_VOCABLES


# A two-part sound ("uh-huh", "uh-uh", "mm-hmm", "mhm") is a yes or a no; a lone "uh" or
# "um" is a filler and the caller is still thinking.
_ANSWER_SOUNDS = re.compile(r"^(?:[a-z]+-[a-z-]+|mhm+|mm+hm+|uhhuh)$")


def _answer_sounds(lowered: str) -> bool:
    tokens = re.findall(r"[a-z0-9'-]+", lowered)
    return bool(tokens) and all(
        _ANSWER_SOUNDS.match(t) and all(_vocable(part) for part in t.split("-") if part) for t in tokens
    )


def _is_short_answer(words: list[str]) -> bool:
    while words and words[0] in _INTERJECTIONS and len(words) > 1:
        words = words[1:]
    phrase = " ".join(words)
    if phrase in _SHORT_ANSWERS:
        return True
    return any(
        " ".join(words[:cut]) in _SHORT_ANSWERS and " ".join(words[cut:]) in _SHORT_ANSWERS
        for cut in range(1, len(words))
    )


def transcript_score(text: str, options: TurnOptions) -> float:
    """0 (certainly unfinished) .. 1 (certainly finished), from the words alone.

    The order matters: a whole short answer ("No.", "Thank you.") is recognised before its
    last word is judged, and a question mark before an ending that is often unfinished
    ("What about you?")."""
    stripped = text.strip()
    if not stripped:
        return 0.5  # no words, no opinion
    if stripped.endswith(("...", "…", "-", ",")):
        return options.score_cut_off
    lowered = stripped.lower()
    words = _WORD.findall(lowered)
    if not words:
        return 0.5
    if _is_short_answer(words) or _answer_sounds(lowered):
        return options.score_short_answer
    last = words[-1]
    if last in _FILLERS:
        return options.score_filler
    if last in _CUT_OFF_ENDINGS:
        return options.score_cut_off
    if last.isdigit() and _NUMBER_CONTEXT.search(lowered):
        digits = sum(len(w) for w in words if w.isdigit())
        return options.score_partial_number if digits < 10 else options.score_full_number
    if stripped.endswith("?"):
        return options.score_question
    punctuated = stripped.endswith((".", "!"))
    if last in _OPEN_ENDINGS:
        return options.score_sentence_end if punctuated else options.score_open_ending
    if words[0] in _QUESTION_START and len(words) >= 3:
        return options.score_question_words
    if punctuated:
        return options.score_sentence_end
    if len(words) <= 2:
        return options.score_few_words
    return options.score_other


@dataclass(frozen=True, slots=True)
class EndOfTurnDecision:
    score: float
    complete: bool
    silence_ms: int  # how long after the end of speech the turn ends, if the caller stays silent


def decide(text: str, acoustic_probability: float, options: TurnOptions) -> EndOfTurnDecision:
    words = transcript_score(text, options)
    if acoustic_probability >= 0:
        w = options.acoustic_weight
        score = w * acoustic_probability + (1 - w) * words
        # The words veto a confident acoustic "done" on an obviously cut-off sentence.
        if words <= max(options.score_cut_off, options.score_filler):
            score = min(score, words + options.acoustic_veto_margin)
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
    """ "uh-huh", "okay, right": acknowledgements that ask for no answer and interrupt nothing.

    Said over the agent's speech, these let the reply play on; said after the agent asked
    something, the orchestrator answers them like any other turn."""
    normalized = " ".join(_WORD.findall(text.lower().replace("-", " ")))
    if not normalized:
        return False
    phrases = {" ".join(_WORD.findall(b.lower().replace("-", " "))) for b in options.backchannels}
    if normalized in phrases:
        return True
    single = {p for p in phrases if " " not in p}
    words = normalized.split()
    return len(words) <= 3 and all(word in single or _vocable(word) for word in words)


def same_words(a: str, b: str) -> bool:
    """The same words, whatever the case and punctuation: an interim transcript and the
    final one often differ only in those."""
    return _WORD.findall(a.lower()) == _WORD.findall(b.lower())
