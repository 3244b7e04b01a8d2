"""The states of a call, as a telephony engineer would name them."""

from __future__ import annotations

import enum


class CallState(enum.StrEnum):
    LISTENING = "listening"  # nobody speaks; the agent waits for the caller
    CALLER_SPEAKING = "caller_speaking"
    THINKING = "thinking"  # the caller's turn ended; the reply is on its way
    SPEAKING = "speaking"  # reply audio is playing
    PAUSED = "paused"  # the caller talks over the reply; its voice stopped until we know why
    ENDED = "ended"
