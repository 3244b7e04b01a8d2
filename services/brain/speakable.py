"""Make an LLM reply fit for a phone line, whatever the model emits.

Models are trained for chat windows: they write markdown, bullet lists, emoji, URLs,
"$120" and "9 AM". A TTS voice reads those literally ("asterisk", "dollar sign one two
zero") or stumbles, and a caller cannot skim a list. Small local models ignore "no lists,
no markdown" in the prompt often enough that the text must be fixed after the fact. Long
replies are cut too: on the phone a third sentence is one the caller has to wait through.

Pure functions and small stateful shapers with no I/O, so all of it is unit-tested.
"""

from __future__ import annotations

import re

from services.brain.sentences import SentenceSplitter

MAX_SENTENCES = 2

_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_URL = re.compile(r"(?:https?://|www\.)\S*[^\s.,!?;:)]", re.IGNORECASE)  # keeps the sentence's own period
_EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0f\u200d\u20e3]")
_MARKUP = re.compile(r"[*_`~#|>]+")
_TIME = re.compile(r"\b(\d{1,2})(?:[:.](\d{2}))?\s*([ap])\.?\s*m\b\.?", re.IGNORECASE)
_TIME_RANGE = re.compile(r"([ap]\.m\.)\s*(?:-|\u2013|\u2014)\s*(\d)")
_MONEY = re.compile(r"\$\s?(\d[\d,]*)(?:\.(\d{2}))?")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.!?;:])")
_REPEATED_PUNCT = re.compile(r"([,;:])\s*[,;:.]+")
_SPACES = re.compile(r"\s+")
_LIST_MARKER = re.compile(r"\n+[ \t]*(?:[-*\u2022+]|\d{1,2}[.)]|#{1,6})[ \t]+(?=\S)")
_MAYBE_MARKER = re.compile(r"\n+[ \t]*(?:[-*\u2022+]|\d{1,2}[.)]?|#{1,6})?[ \t]*")


def _time(match: re.Match[str]) -> str:
    hour, minutes, half = match.group(1), match.group(2), match.group(3).lower()
    clock = hour if not minutes or minutes == "00" else f"{hour}:{minutes}"
    return f"{clock} {half}.m."


def _money(match: re.Match[str]) -> str:
    dollars, cents = match.group(1).replace(",", ""), match.group(2)
    unit = "dollar" if dollars == "1" else "dollars"
    if cents and cents != "00":
        return f"{dollars} {unit} and {int(cents)} cents"
    return f"{dollars} {unit}"


def speakable(text: str) -> str:
    """One sentence as a voice should read it; empty when nothing speakable is left."""
    text = _LINK.sub(r"\1", text)
    text = _URL.sub("", text)
    text = _EMOJI.sub("", text)
    text = _MARKUP.sub(" ", text)
    text = _TIME.sub(_time, text)
    text = _TIME_RANGE.sub(r"\1 to \2", text)
    text = _MONEY.sub(_money, text)
    text = text.replace("%", " percent").replace("&", " and ").replace("@", " at ")
    text = _SPACES.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _REPEATED_PUNCT.sub(r"\1", text)
    text = text.strip(" ,;:-")
    return text if any(c.isalnum() for c in text) else ""


class LineFlattener:
    """Streams text with newlines and list markers turned into running speech.

    A list arrives token by token, so after a newline the text is held until it is clear
    whether a list marker ("- ", "2. ", "## ") follows; items then join with commas.
    """

    def __init__(self) -> None:
        self._hold = ""
        self._last = ""  # last character released, to join after "." or ":" with a space

    def feed(self, delta: str) -> str:
        out: list[str] = []
        text = self._hold + delta
        self._hold = ""
        while (nl := text.find("\n")) >= 0:
            out.append(text[:nl])
            rest = text[nl:]
            marker = _LIST_MARKER.match(rest)
            if marker is None and _MAYBE_MARKER.fullmatch(rest):
                self._hold = rest  # undecided until more text arrives
                return self._release(out)
            before = "".join(out).rstrip() or self._last
            joiner = " " if marker is None or before[-1:] in ".:!?" or not before else ", "
            out.append(joiner)
            text = rest[marker.end() :] if marker else rest.lstrip("\n")
        out.append(text)
        return self._release(out)

    def flush(self) -> str:
        held, self._hold = self._hold, ""
        return self._release([held.replace("\n", " ")]) if held.strip("\n \t") else ""

    def _release(self, parts: list[str]) -> str:
        text = "".join(parts)
        if text.strip():
            self._last = text.rstrip()[-1:]
        return text


class SpeakableReply:
    """Deltas in, speakable sentences out, at most `max_sentences` of them.

    Once `full`, the caller should stop reading the model's stream (and close it), which
    also saves the tokens a small model would spend rambling.
    """

    def __init__(self, max_sentences: int = MAX_SENTENCES) -> None:
        self.max_sentences = max_sentences
        self.count = 0
        self._lines = LineFlattener()
        self._splitter = SentenceSplitter()

    @property
    def full(self) -> bool:
        return self.count >= self.max_sentences

    def feed(self, delta: str) -> list[str]:
        return self._take(self._splitter.feed(self._lines.feed(delta)))

    def flush(self) -> list[str]:
        if self.full:
            return []
        tail = self._lines.flush()
        return self._take(self._splitter.feed(tail) + self._splitter.flush())

    def _take(self, sentences: list[str]) -> list[str]:
        out: list[str] = []
        for sentence in sentences:
            if self.full:
                break
            if spoken := speakable(sentence):
                out.append(spoken)
                self.count += 1
        return out
