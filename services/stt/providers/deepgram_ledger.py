"""The caller's audio as sent to Deepgram: call audio time, wall clock, and what is unacknowledged.

Deepgram stamps everything in seconds of the audio *its connection* received. Two things
need more than that: latency accounting needs the wall-clock moment of the end of the
caller's speech, and a reconnect must not lose words, so the audio Deepgram has not
finalized yet must be sent again to the new connection. Both are answered here, in "call
audio time": bytes of 8 kHz mu-law (one byte per sample) since the call's first frame, the
same on every connection. A connection that started at call offset `base` reports `t`
seconds for call offset `base + t * 8000`.

A frame's arrival time stamps the *end* of its audio: that is when the sample was complete
at our edge, which is what "end of speech" means to a caller waiting for an answer.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

BYTES_PER_S = 8000  # 8 kHz mu-law, mono
ANCHOR_KEEP_S = 120.0  # arrival times kept for mapping, even of acknowledged audio


def seconds_to_offset(seconds: float) -> int:
    return max(0, round(seconds * BYTES_PER_S))


@dataclass(slots=True)
class _Chunk:
    offset: int
    payload: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.payload)


class AudioLedger:
    def __init__(self, max_unacked_s: float = 30.0) -> None:
        self.max_unacked = int(max_unacked_s * BYTES_PER_S)
        self.end = 0  # bytes appended so far: the call audio time of the next frame
        self.acked = 0  # Deepgram finalized everything before this offset
        self.dropped = 0  # unacknowledged bytes given up to the cap (never replayed)
        self._chunks: deque[_Chunk] = deque()
        self._unacked_bytes = 0
        self._ends: list[int] = []  # chunk end offsets, ascending ...
        self._arrivals: list[int] = []  # ... and when each chunk was complete (wall-clock us)

    def append(self, payload: bytes, arrived_us: int) -> int:
        """Record a frame; return its call offset."""
        offset = self.end
        self._chunks.append(_Chunk(offset, payload))
        self.end += len(payload)
        self._unacked_bytes += len(payload)
        self._ends.append(self.end)
        self._arrivals.append(arrived_us)
        keep = int(ANCHOR_KEEP_S * BYTES_PER_S)
        if len(self._ends) > 64 and self._ends[0] < self.end - 2 * keep:  # trim rarely, in bulk
            cut = bisect.bisect_left(self._ends, self.end - keep)
            del self._ends[:cut], self._arrivals[:cut]
        while self._unacked_bytes > self.max_unacked and len(self._chunks) > 1:
            dropped = self._chunks.popleft()
            self._unacked_bytes -= len(dropped.payload)
            self.dropped += len(dropped.payload)
            self.acked = max(self.acked, dropped.end)
        return offset

    def ack(self, upto: int) -> None:
        """Deepgram finalized the audio before call offset `upto`: it needs no replay."""
        self.acked = max(self.acked, min(upto, self.end))
        while self._chunks and self._chunks[0].end <= self.acked:
            self._unacked_bytes -= len(self._chunks.popleft().payload)

    @property
    def unacked_bytes(self) -> int:
        return self.end - self.replay_start()

    def replay_start(self) -> int:
        """Where a new connection's audio begins: the first unacknowledged byte."""
        first = self._chunks[0].offset if self._chunks else self.end
        return max(self.acked, first)

    def read(self, start: int, limit: int) -> bytes:
        """Up to `limit` bytes of retained audio from call offset `start` (empty at the end)."""
        out = bytearray()
        for chunk in self._chunks:
            if chunk.end <= start:
                continue
            out += chunk.payload[max(0, start - chunk.offset) :]
            if len(out) >= limit:
                break
        return bytes(out[:limit])

    def wall_us(self, offset: int) -> int:
        """Wall clock of call offset `offset`, from the arrival of the frame holding it."""
        if not self._ends:
            return 0
        i = min(bisect.bisect_left(self._ends, offset), len(self._ends) - 1)
        return self._arrivals[i] - round((self._ends[i] - offset) * 1_000_000 / BYTES_PER_S)
