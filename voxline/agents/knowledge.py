"""An agent's knowledge base and a small BM25 retriever over it.

A phone agent's facts (prices, hours, policies) outgrow a system prompt quickly, and a
long prompt costs time to first token on every turn. Only the few paragraphs that match
what the caller just said (and the turn before, for follow-ups like "and on Saturday?")
go into the prompt. BM25 over paragraphs is enough for a business's FAQ-sized documents,
needs no model and no dependency, and is deterministic, so it is unit-tested exactly.
"""

from __future__ import annotations

import heapq
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

_WORD = re.compile(r"[a-z0-9]+")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
MAX_CHUNK_CHARS = 800  # ~150 words: a paragraph longer than this is cut between sentences
OVERLAP_CHARS = 200  # a cut repeats the last sentence before it when it is no longer than this

# Words so common in questions that they would match every chunk.
STOPWORDS = frozenset(
    "a an and are as at be but by can could do does for from have how i if in is it me my of on or our please "
    "so that the their there this to us was we what when where which who why will with would you your".split()
)


class KnowledgeEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A `[[knowledge]]` entry of an agent's TOML: inline `text`, or a `file`.

    (TOML allows either `knowledge = ["faq.md", ...]` or `[[knowledge]]` tables in one
    file, not both; `file` lets the table form name files too.)"""

    text: str = ""
    title: str = ""
    file: str = ""


class KnowledgePathError(PermissionError):
    """A file path of an agent that would read outside the agent's directory."""


def confined(base_dir: Path, name: str) -> Path:
    """`name` inside `base_dir`, symlinks resolved. An agent's TOML may come from someone
    who should not read this machine's files (`/proc/self/environ` holds the API keys),
    so an absolute path, `..` out of the directory, or a link that leads out is refused;
    a link that stays inside (a Kubernetes ConfigMap's `..data/`) is fine."""
    if not name or Path(name).is_absolute():
        raise KnowledgePathError(f"path {name[:200]!r} must be relative to the agent's directory")
    root = base_dir.resolve()
    try:
        path = (root / name).resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL byte
        raise KnowledgePathError(f"path {name[:200]!r} cannot be resolved") from None
    if path == root or not path.is_relative_to(root):
        raise KnowledgePathError(f"path {name[:200]!r} leads outside the agent's directory")
    return path


@dataclass(frozen=True)
class Chunk:
    source: str
    text: str


def _stem(word: str) -> str:
    """A crude fold so callers' and documents' word forms meet ("prices" ~ "price",
    "parking" ~ "park"); a real stemmer buys little on FAQ-sized text."""
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    if len(word) > 5 and word.endswith("ing"):
        word = word[:-3]
    return word


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens without stopwords, folded by `_stem`."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def _sentences(paragraph: str) -> list[tuple[str, str]]:
    """A paragraph's lines, each cut into sentences, as (separator before, text) pairs, so
    an over-long paragraph can be packed back together at its natural seams."""
    units: list[tuple[str, str]] = []
    for line in paragraph.splitlines():
        for i, sentence in enumerate(s for s in _SENTENCE_END.split(line.strip()) if s):
            units.append(("\n" if i == 0 and units else " ", sentence))
    return units


def _hard_cut(text: str, max_chars: int) -> list[str]:
    """A run-on text without sentence ends, cut at the last space before the cap (or at the cap)."""
    pieces: list[str] = []
    while len(text) > max_chars:
        cut = text.rfind(" ", max_chars // 2, max_chars + 1)
        cut = cut if cut > 0 else max_chars
        pieces.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    return [*pieces, text] if text else pieces


def split_paragraphs(text: str, max_chars: int = MAX_CHUNK_CHARS, overlap_chars: int = OVERLAP_CHARS) -> list[str]:
    """Blank-line separated paragraphs, each a chunk: a paragraph is the unit an FAQ or a
    policy states one fact in, and a small chunk keeps the prompt short. An over-long one is
    packed sentence by sentence up to `max_chars`, and the next piece repeats the previous
    piece's last sentence when it is short (`overlap_chars`), so a fact stated across the
    cut is still whole in one piece."""
    chunks: list[str] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = paragraph.strip()
        if len(paragraph) <= max_chars:
            if paragraph:
                chunks.append(paragraph)
            continue
        units = [(sep, cut) for sep, sentence in _sentences(paragraph) for cut in _hard_cut(sentence, max_chars)]
        piece, last = "", ""
        for sep, unit in units:
            if piece and len(piece) + len(sep) + len(unit) > max_chars:
                chunks.append(piece)
                carry = last if last and len(last) <= overlap_chars else ""
                piece = carry if carry and len(carry) + 1 + len(unit) <= max_chars else ""
                sep = " " if piece else ""
            piece = f"{piece}{sep}{unit}" if piece else unit
            last = unit
        if piece:
            chunks.append(piece)
    return chunks


def markdown_sections(text: str) -> list[tuple[str, str]]:
    """(heading path, body) per Markdown section: a chunk cut from under "## Pricing" of
    "# Whitening" keeps both headings, so "how much is whitening" still finds the bare
    "It costs 350 dollars." paragraph."""
    sections: list[tuple[str, str]] = []
    path: list[tuple[int, str]] = []
    body: list[str] = []
    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading is None:
            body.append(line)
            continue
        sections.append((" > ".join(h for _, h in path), "\n".join(body)))
        level = len(heading.group(1))
        path = [(lvl, h) for lvl, h in path if lvl < level] + [(level, heading.group(2).strip())]
        body = []
    sections.append((" > ".join(h for _, h in path), "\n".join(body)))
    return [(head, b) for head, b in sections if b.strip()]


class UnsupportedDocument(ValueError):
    """A document type the chunker cannot read as text."""


def media_type_of(name: str) -> str:
    """The media type of a knowledge file by its suffix: Markdown or plain text."""
    return "text/markdown" if name.lower().endswith((".md", ".markdown")) else "text/plain"


def chunk_document(text: str, source: str, media_type: str = "text/plain") -> list[Chunk]:
    """A document's chunks. Plain text and Markdown only: HTML and PDF are turned into
    Markdown or text by the upload path first (the seam is here: parse, then call this), so
    retrieval never sees markup and one chunker serves every format."""
    if media_type == "text/plain":
        return [Chunk(source, p) for p in split_paragraphs(text)]
    if media_type != "text/markdown":
        raise UnsupportedDocument(f"cannot chunk {media_type!r}: convert it to text/plain or text/markdown first")
    return [
        Chunk(source, f"{head}\n{p}" if head else p)
        for head, body in markdown_sections(text)
        for p in split_paragraphs(body)
    ]


def load_chunks(entries: Iterable[str | KnowledgeEntry], base_dir: Path) -> list[Chunk]:
    """Chunks of every knowledge file (inside the agent's directory) and inline entry."""
    chunks: list[Chunk] = []
    for entry in entries:
        if isinstance(entry, KnowledgeEntry) and entry.file:
            chunks += load_chunks([entry.file], base_dir)
        elif isinstance(entry, KnowledgeEntry):
            text = f"{entry.title}\n{entry.text}" if entry.title else entry.text
            chunks += [Chunk(entry.title or "inline", p) for p in split_paragraphs(text)]
        else:
            path = confined(base_dir, entry)  # checked when the agent loaded; a link may change since
            chunks += chunk_document(path.read_text(encoding="utf-8"), path.name, media_type_of(path.name))
    return chunks


class Bm25:
    """Okapi BM25 (k1=1.5, b=0.75) over a fixed list of chunks, with postings lists, so a
    query costs the chunks its words occur in, not every chunk (500 pages stay ~1 ms)."""

    def __init__(self, chunks: Sequence[Chunk], k1: float = 1.5, b: float = 0.75) -> None:
        self.chunks = list(chunks)
        self.k1, self.b = k1, b
        terms = [Counter(tokenize(c.text)) for c in self.chunks]
        lengths = [sum(t.values()) for t in terms]
        avg_len = (sum(lengths) / len(lengths)) if lengths else 0.0
        self._norm = [k1 * (1 - b + b * length / avg_len) if avg_len else k1 for length in lengths]
        self._postings: dict[str, list[tuple[int, int]]] = {}
        for i, counts in enumerate(terms):
            for term, tf in counts.items():
                self._postings.setdefault(term, []).append((i, tf))
        n = len(self.chunks)
        self._idf = {t: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self._postings.items()}

    def scores(self, query: str) -> list[float]:
        out = [0.0] * len(self.chunks)
        for word in set(tokenize(query)):
            idf, k1 = self._idf.get(word, 0.0), self.k1
            for i, tf in self._postings.get(word, ()):
                out[i] += idf * tf * (k1 + 1) / (tf + self._norm[i])
        return out

    def ranked(self, query: str, depth: int) -> list[tuple[int, float]]:
        """(chunk number, score) of the `depth` best chunks with a score above zero, best
        first; ties keep document order."""
        hits = [(i, score) for i, score in enumerate(self.scores(query)) if score > 0]
        return heapq.nsmallest(depth, hits, key=lambda pair: (-pair[1], pair[0]))

    def top(self, query: str, k: int = 3) -> list[Chunk]:
        """The k best chunks with a score above zero, best first (ties keep document order)."""
        return [self.chunks[i] for i, _ in self.ranked(query, k)]


def knowledge_prompt(chunks: Sequence[Chunk]) -> str:
    """The retrieved chunks as a system prompt section; empty when nothing matched."""
    if not chunks:
        return ""
    body = "\n\n".join(c.text for c in chunks)
    return f"Relevant knowledge (use it to answer; say so if it does not cover the question):\n{body}"
