"""What handling an event asks the world to do. The core only returns these; the actor's
shell carries them out in order, and is the only code that touches the bus, the KV store,
the clock or asyncio."""

from __future__ import annotations

import msgspec

from proto.messages import Message
from proto.records import CallRecord
from services.orchestrator.timers import Timer


class Publish(msgspec.Struct, frozen=True):
    subject: str
    message: Message
    turn_id: int | None = None  # for the Voxline-Turn-Id header of reply traffic


class StartTimer(msgspec.Struct, frozen=True):
    """Post `TimerFired(timer, timer_id)` at `deadline_us`, replacing any earlier start."""

    timer: Timer
    timer_id: int
    deadline_us: int


class CancelTimer(msgspec.Struct, frozen=True):
    timer: Timer


class SaveRecord(msgspec.Struct, frozen=True):
    """Write the call record (best effort, off the handler: the newest write wins). The
    record is the call's live value, so a write that happens later writes what is newest.
    The shell also observes the call's metrics from it (`orchestrator.metrics`)."""

    record: CallRecord


class ReassignStt(msgspec.Struct, frozen=True):
    """Find another STT worker for the call's audio; answer with `SttReassigned`."""


Effect = Publish | StartTimer | CancelTimer | SaveRecord | ReassignStt
