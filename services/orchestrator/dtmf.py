"""Keys a reply's `send_dtmf` tool call asked for, pressed once that reply was heard.

They are a turn of their own (kind `dtmf`): the gateway plays them as keypad tones with
the turn's marks, like reply audio (Twilio's Media Streams take no digits from us, only
audio), so the turn ends when Twilio's echo says the last tone was played, the caller
(an IVR) can talk over it like over any turn, and the record shows when they went out.
No TTS is involved, so no TTS watchdog: a gateway that dies with them is a lost stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proto import subjects
from proto.messages import SendDtmf
from services.orchestrator.states import CallState

if TYPE_CHECKING:
    from services.orchestrator.speech import Speech
    from services.orchestrator.turn import Turn


def press(step: Speech, digits: str) -> Turn:
    call = step.call
    turn = step.new_turn("dtmf")
    turn.dtmf = digits
    turn.brain_done = turn.closed = True
    turn.mark("tts_request", step.now_us)
    step.go(CallState.THINKING)
    order = SendDtmf(call_id=call.call_id, turn_id=turn.turn_id, digits=digits)
    step.publish(subjects.control(call.call_id), order, turn.turn_id)
    return turn
