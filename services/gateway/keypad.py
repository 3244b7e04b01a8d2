"""The keys of a `SendDtmf` order as reply audio frames for the call's playback.

Twilio's bidirectional Media Streams accept `media`, `mark` and `clear` from us and have no
message that sends digits (https://www.twilio.com/docs/voice/media-streams/websocket-messages:
`dtmf` only comes from Twilio, for the caller's keys; sending digits is a ConversationRelay
feature, and a REST `<Play digits>` would replace the call's TwiML and end the stream). So the
keys are played in-band, as ITU-T Q.23 tone pairs (voxline/audio.py), which an IVR hears as
key presses. Each key (tone and gap) is one chunk of the order's turn, sentence 0, so its
mark echoes when it was played; the last closes the sentence and the turn.
"""

from __future__ import annotations

import logging

from proto import AudioFrame, FrameFlags
from voxline.audio import dtmf_mulaw
from voxline.telemetry import now_us

log = logging.getLogger("voxline.gateway.keypad")


def keypad_frames(turn_id: int, digits: str) -> list[AudioFrame]:
    """The frames of `digits`; keys that cannot be played (the brain checks them first)
    give one empty closing frame, so the turn still ends and the call goes on."""
    try:
        chunks = [dtmf_mulaw(key) for key in digits]
    except ValueError:
        log.error("turn %d: %d keys that are not DTMF keys: none pressed", turn_id, len(digits))
        chunks = []
    chunks = chunks or [b""]
    at = now_us()
    last = len(chunks) - 1
    return [
        AudioFrame(
            payload,
            turn_id=turn_id,
            seq=0,
            chunk=i,
            flags=FrameFlags.END_OF_SENTENCE | FrameFlags.END_OF_TURN if i == last else FrameFlags.NONE,
            timestamp_us=at,
        )
        for i, payload in enumerate(chunks)
    ]
