"""The call's metrics, observed in one place: from the call record, when a turn's entry in
it is final and when the call ends. Every latency on the dashboard is then the same
number as in the record (`TurnRecord.latency`), stage by stage, and no turn is counted
twice or left out where the record keeps it.

Labels are closed vocabularies (stage names, turn kinds, outcomes); a call is found from
a metric through the exemplar's trace id, never through a call-id label.
"""

from __future__ import annotations

from typing import get_args

from prometheus_client import Counter, Histogram

from proto.messages import TurnKind
from proto.records import CallRecord, TurnRecord
from voxline.metrics import exemplar
from voxline.telemetry import LATENCY_BUCKETS

# The stages of `Turn.latency_ms()`, in pipeline order (the record's own keys, in ms).
STAGES = (
    "end_of_turn",
    "stt_final",
    "llm_first_token",
    "llm_first_sentence",
    "tts_first_audio",
    "first_media_sent",
    "pipeline_overhead",
    "hop_brain",
    "hop_orchestrator",
    "hop_tts",
    "hop_gateway",
    "barge_in_voice_stop",
)
# What a greeting has of them: no caller speech before it, no brain.
GREETING_STAGES = ("tts_first_audio", "first_media_sent", "hop_tts", "hop_gateway")
# Call outcomes, from the record's end reason (what `CallStopped.reason` says) and turns.
OUTCOMES = ("caller_hangup", "agent_hangup", "transferred", "transfer_failed", "failed", "other")
_OUTCOME_OF_REASON = {
    "caller hung up": "caller_hangup",
    "stream closed": "caller_hangup",
    "agent hung up": "agent_hangup",
    "transferred": "transferred",
    "transfer failed": "transfer_failed",
    "transfer unavailable": "transfer_failed",
}
# Why a turn was cancelled when the caller interrupted it (caller.py's reasons).
INTERRUPTING = frozenset({"barge_in", "dtmf"})

TURN_STAGE = Histogram(
    "voxline_turn_stage_seconds",
    "Each stage of a turn, as the call record has it (kind=reply: from the caller's end of speech).",
    ["stage", "kind"],
    buckets=LATENCY_BUCKETS,
)
TURN_LATENCY = Histogram(
    "voxline_turn_latency_seconds",
    "Caller-perceived turn latency: the caller's end of speech to the first reply audio sent to them.",
    buckets=LATENCY_BUCKETS,
)
VOICE_STOP = Histogram(
    "voxline_barge_in_voice_stop_seconds",
    "Barge-in: the caller's speech onset to the order that stops the agent's voice (clear).",
    buckets=LATENCY_BUCKETS,
)
CALLS = Counter("voxline_calls_total", "Calls ended, by outcome.", ["outcome"])
TURNS = Counter("voxline_turns_total", "Agent turns concluded, by kind.", ["kind"])
INTERRUPTIONS = Counter("voxline_interruptions_total", "Replies the caller interrupted (speech or keypad).")
BACKCHANNELS = Counter(
    "voxline_backchannels_total", "Times the caller talked over a reply without interrupting it (uh-huh, noise)."
)

# The series exist from the start at zero: a rate over them is then 0 rather than no data,
# and the first observations after a start are counted (a series born at 4 has no rate).
for _outcome in OUTCOMES:
    CALLS.labels(outcome=_outcome)
for _kind in get_args(TurnKind):
    TURNS.labels(kind=_kind)
for _stage in STAGES:
    TURN_STAGE.labels(stage=_stage, kind="reply")
for _stage in GREETING_STAGES:
    TURN_STAGE.labels(stage=_stage, kind="greeting")


def outcome(record: CallRecord) -> str:
    if any(t.kind == "failure" for t in record.turns):
        return "failed"
    return _OUTCOME_OF_REASON.get(record.end_reason, "other")


def observe_turn(turn: TurnRecord, traceparent: str = "") -> None:
    """One turn whose record entry is final."""
    example = exemplar(traceparent)
    TURNS.labels(kind=turn.kind).inc(exemplar=example)
    for stage, ms in turn.latency.items():
        if stage in STAGES:
            TURN_STAGE.labels(stage=stage, kind=turn.kind).observe(ms / 1000, exemplar=example)
    if turn.kind == "reply" and "first_media_sent" in turn.latency:
        TURN_LATENCY.observe(turn.latency["first_media_sent"] / 1000, exemplar=example)
    if "barge_in_voice_stop" in turn.latency:
        VOICE_STOP.observe(turn.latency["barge_in_voice_stop"] / 1000, exemplar=example)
    if turn.interrupted and turn.cancel_reason in INTERRUPTING:
        INTERRUPTIONS.inc(exemplar=example)
    if turn.paused:
        BACKCHANNELS.inc(turn.paused, exemplar=example)


class RecordMetrics:
    """Observes each turn of a call's record once, when it is appended (the record keeps a
    turn only once it is final); `observed` starts at what a resumed call already had."""

    def __init__(self, record: CallRecord, traceparent: str) -> None:
        self.traceparent = traceparent
        self.observed = len(record.turns)
        self.ended = False

    def saw(self, record: CallRecord) -> None:
        for turn in record.turns[self.observed :]:
            observe_turn(turn, self.traceparent)
        self.observed = len(record.turns)
        if record.status == "ended" and not self.ended:
            self.ended = True
            CALLS.labels(outcome=outcome(record)).inc(exemplar=exemplar(self.traceparent))
