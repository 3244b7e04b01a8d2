"""An agent's knowledge base and a small BM25 retriever over it.

A phone agent's facts (prices, hours, policies) outgrow a system prompt quickly, and a
long prompt costs time to first token on every turn. Only the few paragraphs that match
what the caller just said (and the turn before, for follow-ups like "and on Saturday?")
go into the prompt. BM25 over paragraphs is enough for a business's FAQ-sized documents,
needs no model and no dependency, and is deterministic, so it is unit-tested exactly.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

_WORD = re.compile(r"[a-z0-9]+")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
MAX_CHUNK_CHARS = 800  # a paragraph longer than this is cut at line ends, then hard

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


def split_paragraphs(text: str, max_chars: int = MAX_CHUNK_CHARS) -> list[str]:
    """Blank-line separated paragraphs; an over-long one is split at line ends so a chunk
    stays a focused unit (a whole document as one chunk would always win and bloat the prompt)."""
    chunks: list[str] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        piece = ""
        for line in paragraph.splitlines():
            candidate = f"{piece}\n{line}" if piece else line
            if len(candidate) > max_chars and piece:
                chunks.append(piece)
                candidate = line
            while len(candidate) > max_chars:
                chunks.append(candidate[:max_chars])
                candidate = candidate[max_chars:]
            piece = candidate
        if piece.strip():
            chunks.append(piece.strip())
    return chunks


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
            chunks += [Chunk(path.name, p) for p in split_paragraphs(path.read_text(encoding="utf-8"))]
    return chunks


class Bm25:
    """Okapi BM25 (k1=1.5, b=0.75) over a fixed list of chunks."""

    def __init__(self, chunks: Sequence[Chunk], k1: float = 1.5, b: float = 0.75) -> None:
        self.chunks = list(chunks)
        self.k1, self.b = k1, b
        self._terms = [Counter(tokenize(c.text)) for c in self.chunks]
        self._lengths = [sum(t.values()) for t in self._terms]
        self._avg_len = (sum(self._lengths) / len(self._lengths)) if self._lengths else 0.0
        df: Counter[str] = Counter()
        for terms in self._terms:
            df.update(terms.keys())
        n = len(self.chunks)
        self._idf = {term: math.log(1 + (n - f + 0.5) / (f + 0.5)) for term, f in df.items()}

    def scores(self, query: str) -> list[float]:
        words = set(tokenize(query))
        out: list[float] = []
        for terms, length in zip(self._terms, self._lengths, strict=True):
            score = 0.0
            norm = self.k1 * (1 - self.b + self.b * length / self._avg_len) if self._avg_len else self.k1
            for word in words:
                tf = terms.get(word, 0)
                if tf:
                    score += self._idf[word] * tf * (self.k1 + 1) / (tf + norm)
            out.append(score)
        return out

    def top(self, query: str, k: int = 3) -> list[Chunk]:
        """The k best chunks with a score above zero, best first (ties keep document order)."""
        ranked = sorted(enumerate(self.scores(query)), key=lambda pair: (-pair[1], pair[0]))
        return [self.chunks[i] for i, score in ranked[:k] if score > 0]


def knowledge_prompt(chunks: Sequence[Chunk]) -> str:
    """The retrieved chunks as a system prompt section; empty when nothing matched."""
    if not chunks:
        return ""
    body = "\n\n".join(c.text for c in chunks)
    return f"Relevant knowledge (use it to answer; say so if it does not cover the question):\n{body}"
