"""The Voxline bus contract, version 1: every subject name and every message type.

Both sides of every message import from here and nowhere else. See README.md for who
publishes and who subscribes to each subject.
"""

from proto.audio_frame import AudioFrame, FrameFlags
from proto.codec import decode, encode
from proto.headers import CALL_ID, TURN_ID, TRACEPARENT, call_headers
from proto.marks import MarkName
from proto import messages, subjects

__all__ = [
    "AudioFrame",
    "FrameFlags",
    "MarkName",
    "decode",
    "encode",
    "messages",
    "subjects",
    "CALL_ID",
    "TURN_ID",
    "TRACEPARENT",
    "call_headers",
]
