"""Which parts of a reply the caller heard: never, once, or twice.

Pausing a reply for an "uh-huh" and resuming it is easy to get subtly wrong: resume from
the last *sent* chunk and words are lost, resume from the last *confirmed* mark and the
words played after it are heard twice. Timing alone cannot tell these apart, so every
received chunk is placed inside its sentence by the mark that follows it (the mark's
`end_ms` is where that audio ends in the sentence) and the played parts are laid on that
axis. Overlaps are repeats; gaps up to the sentence's known length are losses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from proto.marks import MarkName
from voxline.audio import TELEPHONY_RATE
from voxline.simulator.playback import Chunk

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")


@dataclass
class Coverage:
    """Per sentence of one turn: audio length known from marks, and the played intervals."""

    total_ms: dict[int, float] = field(default_factory=dict)
    played: dict[int, list[tuple[float, float]]] = field(default_factory=dict)

    def union_ms(self, seq: int) -> float:
        return _union_length(self.played.get(seq, []))

    @property
    def played_ms(self) -> float:
        return sum(b - a for spans in self.played.values() for a, b in spans)

    @property
    def repeated_ms(self) -> float:
        """Audio heard more than once (a resumed reply that went back too far)."""
        return max(0.0, self.played_ms - sum(self.union_ms(s) for s in self.played))

    def by_sentence(self) -> dict[int, tuple[float, float]]:
        """seq -> (ms played at least once, sentence ms as far as the marks told)."""
        seqs = sorted(set(self.total_ms) | set(self.played))
        return {s: (round(self.union_ms(s), 1), self.total_ms.get(s, 0.0)) for s in seqs}

    @property
    def lost_ms(self) -> float:
        """Audio the marks announced (up to each sentence's end) that never played."""
        return sum(max(0.0, total - self.union_ms(seq)) for seq, total in self.total_ms.items())


def _union_length(spans: list[tuple[float, float]]) -> float:
    total = 0.0
    cur_a: float | None = None
    cur_b = 0.0
    for a, b in sorted(spans):
        if cur_a is None or a > cur_b:
            if cur_a is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_a is not None:
        total += cur_b - cur_a
    return total


def turn_coverage(turn_id: int, heard: list[Chunk], mark_names: list[str]) -> Coverage:
    """Lay the heard chunks of `turn_id` on their sentences' time axes.

    `heard` are the playback model's played() chunks; `mark_names`
    are every mark the gateway sent, which give each sentence's length (its `.S` mark) or,
    for a sentence cut short, the furthest point announced.
    """
    cov = Coverage()
    for name in mark_names:
        m = MarkName.parse(name)
        if m is None or m.turn_id != turn_id:
            continue
        cov.total_ms[m.seq] = max(cov.total_ms.get(m.seq, 0.0), float(m.end_ms))
    for c in heard:
        if c.turn_id != turn_id or c.mark is None or c.sentence_end_ms is None:
            continue
        m = MarkName.parse(c.mark)
        if m is None:
            continue
        full_ms = c.samples * 1000.0 / TELEPHONY_RATE
        start = c.sentence_end_ms - full_ms
        cov.played.setdefault(m.seq, []).append((start, start + c.duration * 1000.0))
    return cov


def estimate_heard_words(
    reply_text: str, by_sentence: dict[int, tuple[float, float]], tolerance_ms: float = 1.0
) -> int:
    """How many words of the reply the caller heard, by the orchestrator's own rule
    (whole sentences, then a share of the first partly played one), from *played* audio.
    `by_sentence` is Coverage.by_sentence(): seq -> (played ms, sentence ms)."""
    words = 0
    for seq, sentence in enumerate(_SENTENCE_SPLIT.split(reply_text.strip())):
        n = len(sentence.split())
        played, total = by_sentence.get(seq, (0.0, 0.0))
        if total > 0 and played >= total - tolerance_ms:
            words += n
            continue
        if total > 0:
            words += min(n, int(n * played / total))
        break
    return words
