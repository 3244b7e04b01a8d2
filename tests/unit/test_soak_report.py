"""The soak's verdict on memory: a working set that grows during the warm-up and then
holds is flat; a process that keeps growing under steady load is not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from voxline.soak_report import memory_trends, plot_memory, table


def _samples(series: dict[str, list[float]], every_s: float = 30.0) -> list[dict[str, Any]]:
    length = max(len(v) for v in series.values())
    return [
        {"at_s": i * every_s, "services": {name: {"rss_mib": v[i]} for name, v in series.items() if i < len(v)}}
        for i in range(length)
    ]


def test_growth_during_warm_up_then_a_plateau_is_flat() -> None:
    # idle 70, the working set for the load reached by 2 min, then noise around 76
    stt = [70.0, 72.0, 74.5, 75.8, 76.0, 75.9, 76.1, 76.0, 75.9, 76.1, 76.0, 76.0, 76.1, 75.9, 76.0, 76.1, 76.0, 76.0]
    (trend,) = memory_trends(_samples({"stt": stt}), warmup_s=120)
    assert (trend.idle_mib, trend.warm_mib, trend.end_mib) == (70.0, 76.0, 76.0)
    assert trend.steady_min == pytest.approx(6.5)
    assert abs(trend.slope_mib_per_min) < 0.05
    assert trend.flat()


def test_steady_growth_is_a_leak() -> None:
    # 0.5 MiB per minute under steady load: 4 MiB over an 8-minute steady window
    leak = [70.0 + 0.25 * i for i in range(21)]
    (trend,) = memory_trends(_samples({"orchestrator": leak}), warmup_s=120)
    assert trend.slope_mib_per_min == pytest.approx(0.5)
    assert trend.projected_mib == pytest.approx(4.0)
    assert trend.flat(tolerance_mib=4.0)
    assert not trend.flat(tolerance_mib=3.9)
    assert not trend.flat()  # the default tolerance, 3 MiB
    longer = [70.0 + 0.25 * i for i in range(41)]  # the same leak over a longer soak
    (trend,) = memory_trends(_samples({"orchestrator": longer}), warmup_s=120)
    assert not trend.flat()


def test_services_are_judged_apart_and_a_late_one_is_kept() -> None:
    samples = _samples({"gateway": [80.0] * 10, "brain": [60.0, 61.0]})
    trends = {t.service: t for t in memory_trends(samples, warmup_s=120)}
    assert trends["gateway"].flat() and trends["gateway"].steady_min == pytest.approx(2.5)
    # no sample after the warm-up: its last one stands for both, no slope made up
    assert (trends["brain"].warm_mib, trends["brain"].slope_mib_per_min, trends["brain"].steady_min) == (61.0, 0, 0)
    lines = table(list(trends.values()))
    assert lines[1].startswith("gateway") and lines[1].endswith("yes")


def test_the_plot_is_written(tmp_path: Path) -> None:
    path = plot_memory(_samples({"stt": [70.0, 75.0, 75.0], "tts": [60.0, 60.0, 60.0]}), 30.0, tmp_path / "m.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nats_server_is_shown_but_not_judged() -> None:
    sawtooth = [19.0, 101.8, 93.6, 88.4, 73.8, 126.8, 114.8, 123.4]  # a Go GC's RSS, 90 s apart
    trends = memory_trends(_samples({"nats": sawtooth, "stt": [70.0] * 8}, every_s=90), warmup_s=120)
    nats = next(t for t in trends if t.service == "nats")
    assert not nats.judged and all(t.judged for t in trends if t.service != "nats")
    assert table(trends)[1].endswith("not judged: Go GC sawtooth")
