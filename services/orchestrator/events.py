"""What a call's actor handles, one at a time: the bus messages of the call (STT, gateway,
brain, TTS) and the events the orchestrator itself posts (a timer expired, the call was
accepted, the STT worker was replaced or lost)."""

from __future__ import annotations

import msgspec

from proto.messages import Message
from services.orchestrator.timers import Timer


class TimerFired(msgspec.Struct, frozen=True):
    timer: Timer
    timer_id: int


class Greet(msgspec.Struct, frozen=True):
    """The call was accepted: the agent speaks first."""

    call_start_us: int


class SttReassigned(msgspec.Struct, frozen=True):
    """The answer to `ReassignStt`: another STT worker took the call's audio, or none did."""

    ok: bool


class SttLost(msgspec.Struct, frozen=True):
    """The STT worker holding the call died and no other took the call."""

    reason: str


class Resumed(msgspec.Struct, frozen=True):
    """This orchestrator took the call over from its saved state: the last owner died or
    handed it over. What that owner did after its last snapshot is unknown here."""

    previous_owner: str  # "" when it was handed over on purpose


Event = Message | TimerFired | Greet | SttReassigned | SttLost | Resumed
