"""The bench's pictures: latency CDFs per scenario, and one turn as a waterfall.

A CDF shows the whole distribution, so a tail that p95 hides (a few calls at seconds) is
visible, and one line per concurrency level shows how load shifts it. The waterfall puts
the call record's stage timings on one axis from the caller's speech end, which is how a
slow turn is read: which stage was late, and how much of the gap is our own overhead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
import matplotlib.pyplot as plt

from voxline.bench.scenarios import SCENARIOS

TARGETS_MS = {"barge_in": 120.0}
METRIC_LABEL = {
    "turn": "turn latency: caller speech end -> first reply audio (ms)",
    "barge_in": "caller onset -> agent voice stops, as heard (ms)",
}


def plot_cdfs(rows: list[dict[str, Any]], path: Path) -> Path:
    """One panel per scenario, one line per level, of the scenario's headline latency."""
    scenarios = [s for s in SCENARIOS if any(r["scenario"] == s for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(scenarios)), figsize=(5.2 * max(1, len(scenarios)), 4.4), squeeze=False)
    for ax, name in zip(axes[0], scenarios, strict=False):
        metric = SCENARIOS[name].cdf_metric
        for row in sorted((r for r in rows if r["scenario"] == name), key=lambda r: r["level"]):
            values = sorted(row.get("series", {}).get(metric) or [])
            if not values:
                continue
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.step(values, ys, where="post", label=f"{row['level']} calls (n={len(values)})")
        if metric in TARGETS_MS:
            ax.axvline(TARGETS_MS[metric], color="red", linestyle="--", linewidth=1, label="target p95")
        ax.axhline(0.95, color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(f"{name}", fontsize=11)
        ax.set_xlabel(METRIC_LABEL[metric], fontsize=8)
        ax.set_ylabel("share of measurements")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Voxline bench: latency CDF per scenario (one line per concurrency level)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def waterfall_bars(latency: dict[str, float]) -> list[tuple[str, float, float]]:
    """(label, start, length) in ms from the caller's speech end.

    The record times the LLM from its request and TTS from its request; the request is
    placed at the end of turn (the LLM) and after the first sentence (TTS), which is where
    the orchestrator sends them unless it started the brain early (preemptive reply).
    """
    eot = latency.get("end_of_turn", 0.0)
    bars: list[tuple[str, float, float]] = []
    if "end_of_turn" in latency:
        bars.append(("end of turn decided", 0.0, eot))
    if "stt_final" in latency:
        bars.append(("STT final transcript", 0.0, latency["stt_final"]))
    if "llm_first_token" in latency:
        bars.append(("LLM first token", eot, latency["llm_first_token"]))
    if "llm_first_sentence" in latency:
        bars.append(("LLM first sentence", eot, latency["llm_first_sentence"]))
    if "tts_first_audio" in latency:
        tts_start = eot + latency.get("llm_first_sentence", 0.0)
        bars.append(("TTS first audio", tts_start, latency["tts_first_audio"]))
    if "first_media_sent" in latency:
        bars.append(("gateway: first media sent", 0.0, latency["first_media_sent"]))
    return bars


def plot_waterfall(latency: dict[str, float], path: Path, title: str, heard_ms: float | None = None) -> Path:
    bars = waterfall_bars(latency)
    if heard_ms is not None:
        bars.append(("caller: first reply audio heard", 0.0, heard_ms))
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(bars) + 1.8))
    colors = plt.get_cmap("tab10")
    for i, (_label, start, length) in enumerate(bars):
        ax.barh(i, length, left=start, color=colors(i % 10), height=0.6)
        ax.text(start + length + 5, i, f"{length:.0f} ms", va="center", fontsize=8)
    ax.set_yticks(range(len(bars)), [b[0] for b in bars], fontsize=9)
    ax.invert_yaxis()
    right = max((s + n for _, s, n in bars), default=1.0)
    ax.set_xlim(0, right * 1.15 + 10)
    ax.set_xlabel("ms after the caller stopped speaking")
    overhead = latency.get("pipeline_overhead")
    sub = f"  (pipeline overhead {overhead:.1f} ms)" if overhead is not None else ""
    ax.set_title(title + sub, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
