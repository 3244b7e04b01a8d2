"""Aggregates over many calls: a missing measurement must never read as zero."""

from __future__ import annotations

import pytest

from voxline.simulator.results import CallResult, TurnResult, aggregate, percentile


def test_percentiles_and_aggregate() -> None:
    assert percentile([], 50) is None
    assert percentile([10.0, 20.0, 30.0, 40.0], 50) == pytest.approx(25.0)
    assert percentile([float(i) for i in range(101)], 95) == pytest.approx(95.0)
    a = CallResult(call_sid="CA1", accepted=True, turns=[TurnResult(0, "hi", first_media_latency_ms=400.0)])
    b = CallResult(call_sid="CA2", accepted=True, turns=[TurnResult(0, "hi", first_media_latency_ms=600.0)])
    c = CallResult(call_sid="CA3", errors=["refused"], turns=[TurnResult(0, "hi")])
    summary = aggregate([a, b, c])
    assert summary["accepted"] == 2 and summary["with_errors"] == 1
    assert summary["turns_without_reply"] == 1
    assert summary["turn_latency_ms"]["p50"] == pytest.approx(500.0)
    assert summary["barge_in_latency_ms"] == {"n": 0, "p50": None, "p95": None}
