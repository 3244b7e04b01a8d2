"""The states of a call, as a telephony engineer would name them, and the transitions
between them.

Every change of a call's state goes through `transition`, so the table below is the whole
story of which moves exist; a move outside it is a bug in the orchestrator and raises
instead of leaving a call in a state nobody planned for.
"""

from __future__ import annotations

import enum


class CallState(enum.StrEnum):
    LISTENING = "listening"  # nobody speaks; the agent waits for the caller
    CALLER_SPEAKING = "caller_speaking"
    THINKING = "thinking"  # the caller's turn ended; the reply is on its way
    SPEAKING = "speaking"  # reply audio is playing
    PAUSED = "paused"  # the caller talks over the reply; its voice stopped until we know why
    ENDED = "ended"


_S = CallState

# from -> the states it may move to. Staying in a state is listed where it happens: the
# caller starts again after a pause (CALLER_SPEAKING), a keypad digit or a failure replaces
# a reply still on its way (THINKING), nothing was said after a noise (LISTENING).
TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    _S.LISTENING: frozenset({_S.LISTENING, _S.CALLER_SPEAKING, _S.THINKING, _S.ENDED}),
    _S.CALLER_SPEAKING: frozenset({_S.CALLER_SPEAKING, _S.LISTENING, _S.THINKING, _S.ENDED}),
    _S.THINKING: frozenset({_S.THINKING, _S.SPEAKING, _S.PAUSED, _S.CALLER_SPEAKING, _S.LISTENING, _S.ENDED}),
    _S.SPEAKING: frozenset({_S.SPEAKING, _S.PAUSED, _S.THINKING, _S.CALLER_SPEAKING, _S.LISTENING, _S.ENDED}),
    _S.PAUSED: frozenset({_S.SPEAKING, _S.THINKING, _S.CALLER_SPEAKING, _S.LISTENING, _S.ENDED}),
    _S.ENDED: frozenset(),
}


class IllegalTransition(RuntimeError):
    pass


def transition(current: CallState, to: CallState) -> CallState:
    """`to`, if the table allows moving there from `current`."""
    if to not in TRANSITIONS[current]:
        raise IllegalTransition(f"a call cannot go from {current.value} to {to.value}")
    return to
