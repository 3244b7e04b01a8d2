"""Where Twilio's playback is inside the chunk it is playing, for a gap-free resume.

Marks say which chunks were heard, one mark per chunk (100 ms). A reply paused for an
"uh-huh" and resumed from the last echoed mark would repeat whatever of the next chunk was
already played. Twilio plays the chunks back to back, so that chunk began playing when the
mark before it came back, or when the chunk reached Twilio if its buffer had run dry. The
time since then, at the moment of `clear`, is audio the caller heard and is not sent again.

Both clocks err towards repeating, never skipping: the echo reaches us after Twilio played
it, and `clear` reaches Twilio after we measured. Only a dry buffer (the chunk started on
arrival, which is later than our send) could overshoot, by the one-way network delay; a
margin covers that.
"""

from __future__ import annotations

import dataclasses

from proto import AudioFrame, MarkName
from voxline.audio import TELEPHONY_RATE

DRY_BUFFER_MARGIN_MS = 40.0  # a one-way trip to Twilio, roughly: what a dry-buffer estimate may overshoot


def unplayed(
    dropped: list[tuple[AudioFrame, MarkName, int]], last_echo_us: int, cleared_us: int
) -> list[tuple[AudioFrame, MarkName]]:
    """The chunks `clear` dropped (each with the time it was sent), less the audio already
    played from the front. A chunk played whole keeps its mark with no audio, so the echo
    still confirms it."""
    if not dropped:
        return []
    sent_us = dropped[0][2]
    played_ms = (cleared_us - max(last_echo_us, sent_us)) / 1000
    if sent_us > last_echo_us:
        played_ms -= DRY_BUFFER_MARGIN_MS
    played = int(played_ms * TELEPHONY_RATE / 1000)  # samples = mu-law bytes
    out: list[tuple[AudioFrame, MarkName]] = []
    for frame, mark, _ in dropped:
        cut = min(max(played, 0), len(frame.payload))
        played -= cut
        out.append((dataclasses.replace(frame, payload=frame.payload[cut:]) if cut else frame, mark))
    return out
