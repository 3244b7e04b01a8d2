"""Caller simulator: behaves like Twilio plus a person on the phone, and measures the agent.

It places a call through the gateway's voice webhook, opens the Media Stream the TwiML
names, streams the caller's voice in real time, models Twilio's playback buffer (mark
echoes, `clear`), and reports latencies on its own clock plus the gateway's call record.
"""

from voxline.simulator.caller import run_call, run_calls
from voxline.simulator.results import BargeInResult, CallResult, PlayedEntry, TurnResult, aggregate
from voxline.simulator.script import CallScript, Utterance

__all__ = [
    "BargeInResult",
    "CallResult",
    "CallScript",
    "PlayedEntry",
    "TurnResult",
    "Utterance",
    "aggregate",
    "run_call",
    "run_calls",
]
