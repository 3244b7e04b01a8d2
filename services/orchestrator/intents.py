"""What the caller's side of a call asks of the agent's side.

The caller's side (end of turn, barge-in: `caller.py`) sees the agent's current reply but
never changes it or the call; it returns these intents, and the call's core carries them
out in order, through the one transition table. So either side can be read alone, and the
caller's decisions are testable as lists of intents.
"""

from __future__ import annotations

import msgspec

from services.orchestrator.timers import TimerKind


class Cancel(msgspec.Struct, frozen=True):
    """Cancel this reply everywhere; a committed one goes to the history as far as it was
    heard."""

    turn_id: int
    reason: str


class Pause(msgspec.Struct, frozen=True):
    """The caller talks over this reply: stop its voice now, keep what was not heard."""

    turn_id: int


class Resume(msgspec.Struct, frozen=True):
    """It was a backchannel or noise: the paused reply plays on."""

    turn_id: int


class StartTentative(msgspec.Struct, frozen=True):
    """Start the brain on the caller's words so far; its audio waits for `Commit`."""

    text: str


class Commit(msgspec.Struct, frozen=True, kw_only=True):
    """The caller's turn is over: answer `text`, with the tentative reply `turn_id` when it
    was started on the same words (0: ask the brain now)."""

    text: str
    turn_id: int = 0
    speech_end_us: int
    stt_final_us: int
    stt_provider_ms: float


class CallerTalking(msgspec.Struct, frozen=True):
    """The caller holds the floor."""


class Listen(msgspec.Struct, frozen=True):
    """Nobody holds the floor; with `idle`, the idle caller's timer starts."""

    idle: bool


class Arm(msgspec.Struct, frozen=True):
    """Start one of the caller's timers (end of turn, final transcript, overlap)."""

    kind: TimerKind
    seconds: float


class Disarm(msgspec.Struct, frozen=True):
    kind: TimerKind


Intent = Cancel | Pause | Resume | StartTentative | Commit | CallerTalking | Listen | Arm | Disarm
