"""From many CallResults to the numbers the targets are stated in.

Pure functions only, so the arithmetic (percentiles, histogram merging, what counts as a
lost word or a cut-off) is unit-tested without a stack. Every statistic is None when
there is no data: a missing number must never read as a perfect zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from voxline.bench.scenarios import SLOW_PARTS, is_backchannel
from voxline.simulator.coverage import estimate_heard_words
from voxline.simulator.results import CallResult, percentile

# Below this, lost or repeated audio is no sound a caller can hear: the few ms a `clear`
# takes to reach Twilio after the gateway measured where playback was.
AUDIBLE_MS = 5.0


def stats(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95)}


def merge_hists(hists: Iterable[dict[int, int]]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for h in hists:
        for k, n in h.items():
            merged[int(k)] = merged.get(int(k), 0) + n
    return merged


def hist_percentile(hist: dict[int, int], q: float) -> float | None:
    """The smallest bucket at or above which `q` percent of the samples lie (nearest rank)."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = max(1, int(-(-total * q // 100)))  # ceil without floats drifting
    seen = 0
    for k in sorted(hist):
        seen += hist[k]
        if seen >= rank:
            return float(k)
    return float(max(hist))


def peak_concurrency(spans: list[tuple[float, float]]) -> int:
    """Most calls in flight at once: what the level actually achieved, not what was asked."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    cur = peak = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return peak


def _reply_turns(record: dict[str, Any] | None) -> list[dict[str, Any]]:
    turns = (record or {}).get("turns") or []
    return [t for t in turns if isinstance(t, dict) and t.get("kind") == "reply"]


# The call record's split of the pipeline overhead by hop (services/orchestrator/turn.py).
OVERHEAD_HOPS = ("hop_brain", "hop_orchestrator", "hop_tts", "hop_gateway")


def _record_series(calls: list[CallResult], key: str) -> list[float]:
    """One call-record latency figure over every reply turn to a question (not a backchannel)."""
    return [
        float(t["latency"][key])
        for r in calls
        for t in _reply_turns(r.record)
        if key in (t.get("latency") or {}) and not is_backchannel(str(t.get("caller_text", "")))
    ]


def _record_turn(record: dict[str, Any] | None, turn_id: int | None) -> dict[str, Any]:
    return next((t for t in _reply_turns(record) if t.get("turn_id") == turn_id), {})


def _backchannel(calls: list[CallResult]) -> dict[str, Any]:
    """Did an "uh-huh" leave the reply whole: nothing lost, nothing twice, no new answer?"""
    lost: list[float] = []
    repeated: list[float] = []
    new_answers = paused = interrupted = incomplete = affected = 0
    for r in calls:
        if not r.turns or r.turns[0].turn_id is None:
            continue
        first = r.turns[0]
        lost.append(first.lost_audio_ms or 0.0)
        repeated.append(first.repeated_audio_ms or 0.0)
        rec = _record_turn(r.record, first.turn_id)
        paused += int(rec.get("paused") or 0) > 0
        interrupted += bool(rec.get("interrupted"))
        incomplete += not first.completed
        answers = sum(is_backchannel(str(t.get("caller_text", ""))) for t in _reply_turns(r.record))
        new_answers += answers
        bad = (lost[-1] > AUDIBLE_MS) or (repeated[-1] > AUDIBLE_MS) or answers > 0 or not first.completed
        affected += bad
    return {
        "n": len(lost),
        "lost_ms": {**stats(lost), "max": max(lost, default=None)},
        "repeated_ms": {**stats(repeated), "max": max(repeated, default=None)},
        "with_lost_audio": sum(v > AUDIBLE_MS for v in lost),
        "with_repeated_audio": sum(v > AUDIBLE_MS for v in repeated),
        "new_answers": new_answers,
        "paused": paused,
        "interrupted": interrupted,
        "reply_not_finished": incomplete,
        "affected": affected,
    }


def _heard_text_mismatches(calls: list[CallResult]) -> tuple[int, int]:
    """(checked, mismatched): the record's heard_text vs the words the simulator played,
    allowing one word for the difference between mark granularity and exact playback."""
    checked = mismatched = 0
    for r in calls:
        for b in r.barge_ins:
            rec = _record_turn(r.record, b.interrupted_turn)
            if not rec or not b.interrupted_played_ms:
                continue
            checked += 1
            expected = estimate_heard_words(str(rec.get("reply_text", "")), b.interrupted_played_ms)
            heard = len(str(rec.get("heard_text", "")).split())
            mismatched += abs(expected - heard) > 1
    return checked, mismatched


def _is_cut_off(r: CallResult) -> bool:
    partial = SLOW_PARTS[0].lower()
    answered_part = any(str(t.get("caller_text", "")).strip().lower() == partial for t in _reply_turns(r.record))
    return answered_part or any(t.early_replies > 0 for t in r.turns)


def summarize(scenario: str, level: int, calls: list[CallResult], spans: list[tuple[float, float]]) -> dict[str, Any]:
    """The row of the result table for one scenario at one level (plus raw series)."""
    turn_ms = [
        t.first_media_latency_ms
        for r in calls
        for t in r.turns
        if t.first_media_latency_ms is not None and not is_backchannel(t.text)
    ]
    overhead = _record_series(calls, "pipeline_overhead")
    end_of_turn = _record_series(calls, "end_of_turn")
    barge = [b.latency_ms for r in calls for b in r.barge_ins if b.latency_ms is not None]
    errors = [e for r in calls for e in r.errors]
    lateness = merge_hists(r.send_lateness_ms for r in calls)
    row: dict[str, Any] = {
        "scenario": scenario,
        "level": level,
        "calls": len(calls),
        "ok": sum(r.accepted and not r.errors for r in calls),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "peak_concurrency": peak_concurrency(spans),
        "turn_latency_ms": stats(turn_ms),
        "pipeline_overhead_ms": stats(overhead),
        "end_of_turn_ms": stats(end_of_turn),
        "barge_in_ms": stats(barge),
        "overhead_hops_ms": {hop: stats(_record_series(calls, hop)) for hop in OVERHEAD_HOPS},
        "sim_lateness_ms": {
            "frames": sum(lateness.values()),
            "p50": hist_percentile(lateness, 50),
            "p99": hist_percentile(lateness, 99),
            "max": float(max(lateness)) if lateness else None,
        },
        "series": {"turn": turn_ms, "barge_in": barge, "overhead": overhead, "end_of_turn": end_of_turn},
    }
    if scenario == "barge_in":
        stale = [b.cancelled_audio_heard_after_ms for r in calls for b in r.barge_ins]
        checked, mismatched = _heard_text_mismatches(calls)
        row["stale_ms"] = {"total": sum(stale), "max": max(stale, default=None), "barge_ins": len(stale)}
        row["heard_text"] = {"checked": checked, "mismatched": mismatched}
    if scenario == "backchannel":
        row["backchannel"] = _backchannel(calls)
    if scenario == "slow_speaker":
        row["cut_offs"] = sum(_is_cut_off(r) for r in calls if r.turns)
    return row
