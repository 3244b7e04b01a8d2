"""A call's whole state as one serialisable value: the agent it talks as, its turns, what
the caller heard, the caller's side of turn-taking, its pending timers and its record.

Only `core.step` changes it, one event at a time, so a snapshot (`msgspec.json.encode`)
taken between two events is consistent, and another orchestrator can go on from it.
"""

from __future__ import annotations

import msgspec

from proto.messages import CallStart, ChatTurn, SpeechEnded, SpeechPaused, SpeechStarted, SttAssign, Transcript
from proto.records import CallRecord
from services.orchestrator.caller import CallerState
from services.orchestrator.states import CallState
from services.orchestrator.timers import PendingTimer
from services.orchestrator.turn import Turn
from voxline.agents import Agent
from voxline.agents.variables import builtins, call_values


class CallLimits(msgspec.Struct, frozen=True, kw_only=True):
    """The orchestrator's settings a call runs with (kept with the call, so a snapshot
    resumes with the same ones)."""

    history_turns: int = 20
    brain_timeout_s: float = 2.0
    tts_timeout_s: float = 5.0
    tts_progress_timeout_s: float = 2.0


class Call(msgspec.Struct, kw_only=True):
    call_id: str
    agent: Agent
    limits: CallLimits
    record: CallRecord
    traceparent: str = ""
    state: CallState = CallState.LISTENING
    history: list[ChatTurn] = []  # what the brain is told: only what the caller heard
    turns: list[Turn] = []  # the agent's turns; the last one is the current one
    next_turn_id: int = 1
    caller: CallerState = msgspec.field(default_factory=CallerState)
    reprompted: bool = False  # the idle caller was asked whether they are still there
    silent_turns: int = 0  # replies in a row TTS could not speak
    timers: list[PendingTimer] = []
    next_timer_id: int = 1
    # The STT events handled last: after a takeover the STT worker replays what came since
    # the snapshot, and an event already handled here is not handled twice.
    recent_stt: list[SpeechStarted | Transcript | SpeechEnded | SpeechPaused] = []
    resumed_at_us: int = 0  # the last takeover: STT events older than it may come twice
    finals_heard: int = 0  # final transcripts so far (a moved call's new STT worker is told)
    stream_sid: str = ""  # the media stream the call is on now (a broken one is replaced)
    stream_lost: str = ""  # why the stream broke, while waiting for Twilio to come back

    @property
    def current(self) -> Turn | None:
        return self.turns[-1] if self.turns else None

    def variables(self) -> dict[str, str]:
        """What the agent's `{{name}}` placeholders take on this call: from the agent as the
        call started and the record (so a resumed call fills them in the same)."""
        record = self.record
        built_in = builtins(record.call_id, record.direction, record.from_number, record.to_number)
        return call_values(self.agent.default_variables, record.variables, built_in)


def new_call(start: CallStart, agent: Agent, limits: CallLimits, traceparent: str, agent_version: int = 0) -> Call:
    record = CallRecord(
        call_id=start.call_id,
        call_sid=start.call_sid,
        agent_id=start.agent_id,
        agent_version=agent_version,  # the agent is kept in the call: later edits change later calls
        status="in-progress",
        started_at_us=start.started_at_us,
        from_number=start.from_number,
        to_number=start.to_number,
        direction=start.direction,
        variables=dict(start.variables),
    )
    return Call(
        call_id=start.call_id,
        agent=agent,
        limits=limits,
        record=record,
        traceparent=traceparent,
        stream_sid=start.stream_sid,
    )


class CallSnapshot(msgspec.Struct, kw_only=True):
    """What another orchestrator resumes the call from (`proto/ownership.py`): the call,
    and how its STT worker was asked for and who holds the audio now."""

    call: Call
    assign: SttAssign | None = None
    stt_worker: str = ""
    gateway: str = ""  # the gateway instance holding the media stream
