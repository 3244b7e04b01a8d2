"""The last few seconds of a call's caller audio, kept by the gateway.

An STT worker that dies in the middle of the caller's sentence takes the audio it heard
but never transcribed with it. The gateway keeps the newest frames of each call and hands
them to the worker that takes the call over (`CallerAudioRequest`), so the sentence is
still transcribed whole.
"""

from __future__ import annotations

from collections import deque

from proto.audio_frame import AudioFrame

KEEP_S = 5.0
FRAMES_PER_S = 50  # Twilio sends 20 ms of audio per media message


class CallerAudioHistory:
    def __init__(self, keep_s: float = KEEP_S) -> None:
        self._frames: deque[AudioFrame] = deque(maxlen=int(keep_s * FRAMES_PER_S))

    def add(self, frame: AudioFrame) -> None:
        self._frames.append(frame)

    def since(self, since_us: int) -> list[bytes]:
        """Encoded frames that arrived after `since_us`, oldest first."""
        return [f.encode() for f in self._frames if f.timestamp_us > since_us]
