"""The IVR side of a simulated call: a phone menu that listens for keypad tones in the
agent's audio, as a real IVR's DTMF receiver does in-band (the agent's `send_dtmf` plays
ITU-T Q.23 tones; Twilio's Media Streams have no other way to send digits).

Keys are detected in the media payloads as they arrive (`voxline.audio.DtmfDetector`,
Goertzel filters over the mu-law audio) and count as pressed once the chunk that completed
them was played in full, Twilio's playback buffer being what the far end hears: a key whose
audio a `clear` threw away was never pressed.
"""

from __future__ import annotations

from voxline.audio import DtmfDetector
from voxline.simulator.playback import Chunk


class KeypadEar:
    def __init__(self) -> None:
        self._detector = DtmfDetector()
        self._keys: list[tuple[str, Chunk]] = []

    def heard(self, chunk: Chunk, payload: bytes) -> None:
        """A media payload from the gateway, queued for playback as `chunk`."""
        for key in self._detector.feed_mulaw(payload):
            self._keys.append((key, chunk))

    def pressed(self, now: float) -> str:
        """The keys played out by `now`, in order."""
        return "".join(key for key, chunk in self._keys if not chunk.cut and chunk.end <= now)
