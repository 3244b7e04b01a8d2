"""Binary audio frames: a fixed 20-byte header followed by 8 kHz mu-law bytes.

Audio is the bulk of bus traffic (50 frames/s per call each way), so it never goes
through JSON: `struct` packs the header and the payload is appended as is.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

VERSION = 1
_HEADER = struct.Struct(">BBHIHHQ")  # version, flags, attempt, turn_id, seq, chunk, timestamp_us
HEADER_SIZE = _HEADER.size


class FrameFlags(enum.IntFlag):
    NONE = 0
    END_OF_SENTENCE = 1  # last chunk of a reply sentence
    END_OF_TURN = 2  # last chunk of the whole reply
    GREETING = 4


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """Caller audio: turn_id 0, seq = Twilio chunk number. Reply audio: turn, sentence, chunk.

    `attempt` numbers the syntheses of one sentence (`Synthesize.attempt`): when a TTS
    worker dies mid-sentence and another one speaks it again, both send chunk 0, 1, ...;
    the attempt tells the gateway which of them is current, so it never splices two."""

    payload: bytes
    turn_id: int = 0
    seq: int = 0
    chunk: int = 0
    flags: FrameFlags = FrameFlags.NONE
    timestamp_us: int = 0  # wall clock when the frame was made (latency accounting)
    attempt: int = 0

    def encode(self) -> bytes:
        header = _HEADER.pack(
            VERSION,
            int(self.flags),
            self.attempt & 0xFFFF,
            self.turn_id,
            self.seq & 0xFFFF,
            self.chunk & 0xFFFF,
            self.timestamp_us,
        )
        return header + self.payload

    @classmethod
    def decode(cls, data: bytes) -> AudioFrame:
        """Raise ValueError on a frame this version cannot read."""
        if len(data) < HEADER_SIZE:
            raise ValueError(f"audio frame too short: {len(data)} bytes")
        version, flags, attempt, turn_id, seq, chunk, ts = _HEADER.unpack_from(data)
        if version != VERSION:
            raise ValueError(f"unsupported audio frame version {version}")
        return cls(bytes(data[HEADER_SIZE:]), turn_id, seq, chunk, FrameFlags(flags), ts, attempt)
