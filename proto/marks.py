"""Names of the Twilio `mark`s the gateway sends after each reply chunk.

Twilio echoes a mark when playback reaches it, so the name says exactly which audio was
heard: turn, sentence, chunk, how far into the sentence's audio the chunk ends, and
whether it closes the sentence or the whole reply. Example: `t3.s0.c4.e500.S.T`.
"""

from __future__ import annotations

import msgspec


class MarkName(msgspec.Struct, frozen=True):
    turn_id: int
    seq: int
    chunk: int
    end_ms: int  # audio of this sentence played once this mark is reached
    sentence_end: bool = False  # the final chunk of the sentence
    turn_end: bool = False  # the final chunk of the whole reply

    def encode(self) -> str:
        flags = (".S" if self.sentence_end else "") + (".T" if self.turn_end else "")
        return f"t{self.turn_id}.s{self.seq}.c{self.chunk}.e{self.end_ms}{flags}"

    @classmethod
    def parse(cls, name: str) -> MarkName | None:
        """Parse a mark echo; None for names Voxline did not write."""
        parts = name.split(".")
        if len(parts) < 4 or [p[:1] for p in parts[:4]] != ["t", "s", "c", "e"]:
            return None
        flags = set(parts[4:])
        if not flags <= {"S", "T"}:
            return None
        try:
            numbers = [int(p[1:]) for p in parts[:4]]
        except ValueError:
            return None
        turn_id, seq, chunk, end_ms = numbers
        return cls(turn_id, seq, chunk, end_ms, sentence_end="S" in flags, turn_end="T" in flags)
