"""What a simulated call measured, and the statistics over many calls.

All times are milliseconds on the simulator's own monotonic clock, relative to the
moment the `start` message was sent, so no clock of the system under test is trusted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TurnResult:
    utterance: int
    text: str
    speech_onset_ms: float | None = None
    speech_end_ms: float | None = None
    turn_id: int | None = None  # the reply's turn, from the gateway's mark names
    first_media_latency_ms: float | None = None  # speech end -> first reply media received
    first_played_latency_ms: float | None = None  # speech end -> first reply sample heard
    reply_audio_ms: float = 0.0  # reply audio received
    reply_played_ms: float = 0.0  # reply audio actually heard
    completed: bool = False  # the reply's turn-end mark was echoed
    barge_in: bool = False
    early_replies: int = 0  # replies that started before the caller finished (false endpoints)
    lost_audio_ms: float | None = None  # reply audio announced by marks but never played
    repeated_audio_ms: float | None = None  # reply audio played more than once (bad resume)

    @property
    def speech_end(self) -> float | None:
        return self.speech_end_ms


@dataclass
class BargeInResult:
    utterance: int
    onset_ms: float
    interrupted_turn: int | None
    latency_ms: float | None  # caller onset -> agent voice stops as heard
    stopped_by: str | None  # "clear" or "dry"
    cancelled_audio_heard_after_ms: float  # interrupted (or older) audio heard after the stop
    # seq -> (ms of it played, its length per the marks) for the interrupted turn: lets a
    # reader check the call record's heard_text against what really played.
    interrupted_played_ms: dict[int, tuple[float, float]] = field(default_factory=dict)


@dataclass
class PlayedEntry:
    start_ms: float
    end_ms: float
    turn_id: int | None
    cut: bool
    mark: str | None = None  # the mark that followed this audio: its identity in the reply


@dataclass
class StreamBreak:
    """One end of a media stream that Twilio followed through the `<Connect action>`.
    Times in ms since the first stream's start, on the simulator's clock."""

    at_ms: float
    close_code: int | None
    resumed_at_ms: float | None = None  # the new stream's `start` went out; None: it did not come back
    then: str = ""  # what the action answered, e.g. "<Connect><Stream>" or "<Say>Sorry...</Say> <Hangup>"

    @property
    def gap_ms(self) -> float | None:
        return None if self.resumed_at_ms is None else round(self.resumed_at_ms - self.at_ms, 1)


@dataclass
class CallResult:
    """One call. `accepted` is False when no stream was obtained, or when the gateway closed
    it without ever sending audio (a refusal); close_code/close_reason only when it closed."""

    call_sid: str
    stream_sid: str = ""
    agent_id: str = ""
    accepted: bool = False
    stream_url: str | None = None
    close_code: int | None = None
    close_reason: str | None = None
    closed_by_gateway: bool = False
    turns: list[TurnResult] = field(default_factory=list)
    greeting_latency_ms: float | None = None  # stream start -> first media received
    barge_ins: list[BargeInResult] = field(default_factory=list)
    clears: int = 0
    marks_received: int = 0
    marks_echoed: list[str] = field(default_factory=list)
    media_received: int = 0
    media_sent: int = 0
    played: list[PlayedEntry] = field(default_factory=list)
    duration_ms: float = 0.0
    send_lateness_ms: dict[int, int] = field(default_factory=dict)  # ms late -> frames sent
    # Streams that ended under the caller, and what Twilio's <Connect action> did next.
    stream_breaks: list[StreamBreak] = field(default_factory=list)
    record: dict[str, Any] | None = None
    keys_heard: str = ""  # keypad keys (DTMF tones) the agent played, when the script listened for them
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile; None for no data rather than a misleading zero."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def aggregate(results: list[CallResult]) -> dict[str, Any]:
    turn = [t.first_media_latency_ms for r in results for t in r.turns if t.first_media_latency_ms is not None]
    heard = [t.first_played_latency_ms for r in results for t in r.turns if t.first_played_latency_ms is not None]
    barge = [b.latency_ms for r in results for b in r.barge_ins if b.latency_ms is not None]
    greet = [r.greeting_latency_ms for r in results if r.greeting_latency_ms is not None]
    stages: dict[str, list[float]] = {}
    for r in results:
        for rec_turn in (r.record or {}).get("turns", []):
            if rec_turn.get("kind") == "reply":
                for stage, ms in (rec_turn.get("latency") or {}).items():
                    stages.setdefault(stage, []).append(float(ms))

    def stats(values: list[float]) -> dict[str, Any]:
        return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95)}

    return {
        "calls": len(results),
        "accepted": sum(r.accepted for r in results),
        "with_errors": sum(bool(r.errors) for r in results),
        "turns": sum(len(r.turns) for r in results),
        "turns_without_reply": sum(1 for r in results for t in r.turns if t.first_media_latency_ms is None),
        "greeting_latency_ms": stats(greet),
        "turn_latency_ms": stats(turn),
        "first_played_latency_ms": stats(heard),
        "barge_in_latency_ms": stats(barge),
        "stale_audio_ms_total": sum(b.cancelled_audio_heard_after_ms for r in results for b in r.barge_ins),
        "stages_ms": {stage: stats(values) for stage, values in stages.items()},
    }
