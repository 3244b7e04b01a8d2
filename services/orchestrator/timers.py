"""A call's timers as data: watchdogs on the brain and TTS, the caller's end-of-turn waits,
the idle caller.

A worker can die mid-turn; its queue-group peers take the next request, but the one in
flight is lost. A watchdog per request turns that loss into a defined outcome (retry,
apology) instead of a silent line.

Timers live in the call's state (what, and until when), not in tasks: the actor's shell
runs one task per pending timer and posts `TimerFired` back into the call's queue, so an
expiry is handled like any other event, and a snapshot of the call carries its timers to
another orchestrator. A timer cancelled or restarted after its expiry was already queued
is told apart by its serial number (`timer_id`).
"""

from __future__ import annotations

import enum

import msgspec


class TimerKind(enum.StrEnum):
    END_OF_TURN = "end_of_turn"  # the caller stayed silent long enough: their turn is over
    FINAL_TRANSCRIPT = "final_transcript"  # speech ended but no final transcript followed
    OVERLAP = "overlap"  # the caller talked over the reply this long: an interruption
    IDLE = "idle"  # the caller stayed silent after the agent finished: reprompt, then goodbye
    BRAIN = "brain"  # no reply sentence in time (per turn)
    TTS = "tts"  # no first audio, next progress report or result in time (per turn and sentence)
    MAX_CALL = "max_call"  # the agent's maximum call length (seq 0), then the goodbye's grace (seq 1)
    STREAM_LOST = "stream_lost"  # the media stream broke and Twilio did not come back with a new one


class Timer(msgspec.Struct, frozen=True):
    """Which timer: the caller's timers are one per call, the watchdogs one per request."""

    kind: TimerKind
    turn_id: int = 0
    seq: int = 0


class PendingTimer(msgspec.Struct, frozen=True):
    timer: Timer
    timer_id: int  # serial: an expiry of an older start of the same timer is stale
    deadline_us: int
