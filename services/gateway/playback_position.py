"""Where Twilio's playback stood at the moment we sent `clear`: how much of each chunk it
still held (by our account) the caller had heard.

On `clear`, Twilio empties its buffer and sends back every mark still outstanding
(https://www.twilio.com/docs/voice/media-streams/websocket-messages, "Send a Clear
message"), as the same `mark` event a played mark gets. The echo of a chunk that played
just before the clear may also cross it on the wire. So the echoes that follow a clear say
nothing about what was heard, and it is decided at the clear from what we know then:

- every chunk up to the last echoed mark was played;
- Twilio plays the chunks back to back at 8000 samples/s, so the chunk after the last
  echoed mark began when that echo came, and each later one when the one before ended;
  a chunk that reached Twilio after its buffer ran dry began on arrival instead;
- audio played until the clear, and never beyond the audio we sent.

Both clocks err towards "not heard" (then a resume repeats a little, never skips): the
echo reaches us after Twilio played the mark, and the `clear` reaches Twilio after we
measured. Only a chunk that began on arrival could be placed too early, by the one-way trip
to Twilio; it is placed a margin later than we sent it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from proto import AudioFrame, MarkName
from voxline.audio import TELEPHONY_RATE

DRY_BUFFER_MARGIN_US = 40_000  # a one-way trip to Twilio, roughly: how late a chunk may start after we send it
US_PER_SAMPLE = 1_000_000 // TELEPHONY_RATE  # one mu-law byte is one sample

InFlight = tuple[AudioFrame, MarkName, int]  # a chunk Twilio holds, with when we sent it (µs)


class Heard(NamedTuple):
    """What the caller heard of one chunk by the time of the clear."""

    samples: int  # from the chunk's start
    whole: bool  # its mark was reached: the chunk played to its end (an empty one too)


def heard_at_clear(inflight: Sequence[InFlight], last_echo_us: int, cleared_us: int) -> list[Heard]:
    """How much of each in-flight chunk, in the order sent, the caller heard before
    `cleared_us`; `last_echo_us` is when the last mark before them came back."""
    heard: list[Heard] = []
    cursor_us = last_echo_us  # when the next chunk could start playing
    for frame, _, sent_us in inflight:
        start_us = max(cursor_us, sent_us + DRY_BUFFER_MARGIN_US)
        end_us = start_us + len(frame.payload) * US_PER_SAMPLE
        samples = min(max(cleared_us - start_us, 0) // US_PER_SAMPLE, len(frame.payload))
        heard.append(Heard(samples, cleared_us >= end_us))
        cursor_us = end_us
    return heard


def heard_part(mark: MarkName, frame: AudioFrame, samples: int) -> MarkName:
    """The mark a chunk would carry had it ended after its first `samples`: where in its
    sentence the caller stopped hearing it (rounded down), closing nothing."""
    unheard_ms = -(-(len(frame.payload) - samples) * 1000 // TELEPHONY_RATE)
    return MarkName(mark.turn_id, mark.seq, mark.chunk, max(mark.end_ms - unheard_ms, 0))
