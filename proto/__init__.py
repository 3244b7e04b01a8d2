"""The Voxline bus contract, version 1: every subject name and every message type.

Both sides of every message import from here and nowhere else. See README.md for who
publishes and who subscribes to each subject.
"""

from proto import messages, subjects
from proto.audio_frame import AudioFrame, FrameFlags
from proto.codec import decode, encode
from proto.headers import CALL_ID, TRACEPARENT, TURN_ID, call_headers
from proto.marks import MarkName

__all__ = [
    "CALL_ID",
    "TRACEPARENT",
    "TURN_ID",
    "AudioFrame",
    "FrameFlags",
    "MarkName",
    "call_headers",
    "decode",
    "encode",
    "messages",
    "subjects",
]
