"""Incremental sentence splitting of a streamed LLM reply.

TTS starts on the first sentence, so a sentence is handed out the moment its end is
certain: when the character after `.`, `!` or `?` arrives and is whitespace. That one
character of look-ahead is what tells "3.5", "e.g.x" or "example.com" from a sentence end.

Speakable units matter more than grammar: a fragment of one or two words ("Sure.") is
kept with what follows, since a TTS request per word sounds choppy and costs a round trip,
and a run-on sentence is cut at a comma or space before it delays audio for too long.
"""

from __future__ import annotations

TERMINALS = ".!?"
CLAUSE_MARKS = ";:"
CLOSERS = "\"')]\u201d\u2019\u00bb"  # quotes and brackets that may follow a sentence end
ABBREVIATIONS = frozenset(
    {"dr", "mr", "mrs", "ms", "st", "jr", "sr", "prof", "mt", "vs", "e.g", "i.e", "a.m", "p.m", "u.s", "approx"}
)

MIN_WORDS = 3  # shorter fragments wait for the next sentence (unless they end the reply)
MAX_CHARS = 200  # hard cap of one sentence
CLAUSE_CHARS = 60  # `;` and `:` end a sentence only after a run this long


class SentenceSplitter:
    """Feed text deltas, get complete sentences; `flush()` when the stream ends."""

    def __init__(self, min_words: int = MIN_WORDS, max_chars: int = MAX_CHARS, clause_chars: int = CLAUSE_CHARS):
        self.min_words = min_words
        self.max_chars = max_chars
        self.clause_chars = clause_chars
        self._buf = ""
        self._scan = 0  # where to look for the next boundary; everything before is decided

    def feed(self, delta: str) -> list[str]:
        self._buf += delta
        sentences: list[str] = []
        while (cut := self._next_cut()) is not None:
            self._emit(cut, sentences)
        return sentences

    def flush(self) -> list[str]:
        """The rest of the reply, however short, capped like every sentence."""
        sentences: list[str] = []
        while len(self._buf.strip()) > self.max_chars:
            self._emit(self._cap_cut(), sentences)
        self._emit(len(self._buf), sentences)
        return sentences

    def _emit(self, cut: int, into: list[str]) -> None:
        sentence = self._buf[:cut].strip()
        self._buf = self._buf[cut:].lstrip()
        self._scan = 0
        if sentence:
            into.append(sentence)

    def _next_cut(self) -> int | None:
        buf = self._buf
        i = self._scan
        while i < len(buf):
            end = self._boundary_end(buf, i)
            if end is None:  # undecided until more text arrives
                break
            if end > 0 and self._acceptable(buf, i, end):
                return self._cap_cut() if len(buf[:end].strip()) > self.max_chars else end
            i += 1
        self._scan = i
        if len(buf.strip()) > self.max_chars:
            return self._cap_cut()
        return None

    def _boundary_end(self, buf: str, i: int) -> int | None:
        """Where a sentence ending at `buf[i]` would end (exclusive); 0 if `buf[i]` ends
        nothing; None if the text after it has not arrived yet."""
        char = buf[i]
        if char == "\n":
            return i
        if char not in TERMINALS and char not in CLAUSE_MARKS:
            return 0
        end = i + 1
        if char in TERMINALS:
            while end < len(buf) and buf[end] in CLOSERS:
                end += 1
        if end >= len(buf):
            return None
        return end if buf[end].isspace() else 0

    def _acceptable(self, buf: str, i: int, end: int) -> bool:
        candidate = buf[:end].strip()
        if len(candidate.split()) < self.min_words:
            return False
        if buf[i] in CLAUSE_MARKS:
            return len(candidate) >= self.clause_chars
        if buf[i] == ".":
            return not _is_abbreviation(buf, i)
        return True

    def _cap_cut(self) -> int:
        """Where to cut an over-long run: after the last comma, else at the last space."""
        lead = len(self._buf) - len(self._buf.lstrip())
        window = self._buf[: lead + self.max_chars]
        comma = window.rfind(", ")
        if comma > lead:
            return comma + 1
        space = max(window.rfind(" "), window.rfind("\n"))
        return space if space > lead else lead + self.max_chars


def _is_abbreviation(buf: str, dot: int) -> bool:
    """True if the `.` at `dot` ends an abbreviation or an initial ("Dr.", "e.g.", "J.")."""
    start = dot
    while start > 0 and not buf[start - 1].isspace():
        start -= 1
    word = buf[start:dot].lstrip("\"'([").lower()
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())
