"""Draw a dashboard's panels from Prometheus' answers to their queries, laid out on the
dashboard's own grid: what Grafana would show, for the README where Grafana cannot run.

`answers` maps each panel title to its targets' results: a list of (legend, series) where
a series is [(unix seconds, value)] (one point for an instant query)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use(): the backend is chosen before pyplot loads
from matplotlib.axes import Axes

from deploy.grafana.dashboards import STAGES

Series = list[tuple[float, float]]
Answers = dict[str, list[tuple[str, Series]]]

_UNIT_SCALE = {"s": (1000.0, "ms"), "percentunit": (100.0, "%"), "bytes": (1 / 2**20, "MiB")}


def draw(board: dict[str, Any], answers: Answers, path: Path, start: float) -> Path:
    """`start` (unix seconds) is where every time axis begins."""
    panels = [p for p in board["panels"] if p["type"] != "row"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(16, rows * 0.42))
    fig.suptitle(f"{board['title']}: drawn from Prometheus' answers to the panels' queries", fontsize=13, y=0.93)
    grid = fig.add_gridspec(rows, 24, hspace=3.0, wspace=2.0)
    for panel in panels:
        pos = panel["gridPos"]
        ax = fig.add_subplot(grid[pos["y"] : pos["y"] + pos["h"], pos["x"] : pos["x"] + pos["w"]])
        _draw_panel(ax, panel, answers.get(panel["title"], []), start)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def _draw_panel(ax: Axes, panel: dict[str, Any], results: list[tuple[str, Series]], start: float) -> None:
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
    scale, label = _UNIT_SCALE.get(unit, (1.0, ""))
    ax.set_title(panel["title"], fontsize=9, loc="left")
    ax.tick_params(labelsize=7)
    kind = panel["type"]
    if kind == "heatmap":  # the values are counts; the unit is the buckets'
        scale = 1.0
    finite = [(name, [(t, v * scale) for t, v in s if math.isfinite(v)]) for name, s in results]
    finite = [(name, s) for name, s in finite if s]
    if not finite:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    if kind == "stat":
        ax.axis("off")
        ax.text(0.5, 0.45, f"{finite[0][1][-1][1]:g}", ha="center", va="center", fontsize=28, transform=ax.transAxes)
    elif kind == "bargauge":
        finite.sort(key=lambda r: _stage_order(r[0]))
        names = [name for name, _ in finite]
        values = [s[-1][1] for _, s in finite]
        ax.barh(range(len(values)), values, color=["tab:blue" if n.endswith("p50") else "tab:orange" for n in names])
        ax.set_yticks(range(len(values)), names, fontsize=6)
        ax.invert_yaxis()
        ax.set_xlabel(label, fontsize=7)
    elif kind == "heatmap":
        _heatmap(ax, finite)
    else:
        for name, s in finite:
            ax.plot([t - start for t, _ in s], [v for _, v in s], label=name, linewidth=1.2)
        ax.set_xlim(left=0)
        ax.set_xlabel("seconds since the first scrape", fontsize=7)
        ax.set_ylabel(label, fontsize=7)
        ax.legend(fontsize=6, loc="upper left")


def _stage_order(legend: str) -> tuple[int, str]:
    """Bars in pipeline order ("<stage> p50", "<stage> p95"), as the waterfall reads."""
    stage, _, q = legend.rpartition(" ")
    return (STAGES.index(stage) if stage in STAGES else len(STAGES), q)


def _heatmap(ax: Axes, results: list[tuple[str, Series]]) -> None:
    """Cumulative `le` buckets as Prometheus gives them, drawn per bucket (Grafana's
    heatmap of a histogram): each column a time, each row a latency bucket."""
    buckets = sorted(results, key=lambda r: math.inf if r[0] == "+Inf" else float(r[0]))
    times = sorted({t for _, s in buckets for t, _ in s})
    counts = [[dict(s).get(t, 0.0) for t in times] for _, s in buckets]
    per_bucket = [counts[0]]
    per_bucket += [[max(0.0, b - a) for a, b in zip(lo, hi, strict=True)] for lo, hi in itertools.pairwise(counts)]
    ax.imshow(per_bucket, aspect="auto", origin="lower", cmap="inferno", interpolation="nearest")
    labels = [name if name == "+Inf" else f"{float(name) * 1000:g}" for name, _ in buckets]
    step = max(1, len(labels) // 8)
    ax.set_yticks(range(0, len(labels), step), labels[::step], fontsize=6)
    ax.set_ylabel("ms (bucket upper bound)", fontsize=7)
    ax.set_xlabel("time", fontsize=7)
    ax.set_xticks([])
