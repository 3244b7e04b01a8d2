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
            calls = f"{row['level']} call" + ("s" if row["level"] > 1 else "")
            ax.step(values, ys, where="post", label=f"{calls} (n={len(values)})")
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


def waterfall_bars(latency: dict[str, float], preemptive: bool = False) -> list[tuple[str, float, float]]:
    """(label, start, length) in ms from the caller's speech end.

    The record times the LLM and TTS from their own requests, not from speech end. A
    normal turn requests the LLM at the end of turn and TTS at the first sentence, so the
    bars are laid forward from there and any gap before "first media sent" is overhead. A
    preemptive turn asked the LLM before the end of turn, at a moment the record does not
    keep, so its bars are laid backwards from the first media sent (the critical path).
    """
    eot = latency.get("end_of_turn", 0.0)
    first_sentence = latency.get("llm_first_sentence", 0.0)
    tts = latency.get("tts_first_audio", 0.0)
    llm_start = eot
    if preemptive and "first_media_sent" in latency:
        llm_start = latency["first_media_sent"] - tts - first_sentence
    llm_tag = " (preemptive)" if preemptive else ""
    bars: list[tuple[str, float, float]] = []
    if "end_of_turn" in latency:
        bars.append(("end of turn decided", 0.0, eot))
    if "stt_final" in latency:
        bars.append(("STT final transcript", 0.0, latency["stt_final"]))
    if "llm_first_token" in latency:
        bars.append(("LLM first token" + llm_tag, llm_start, latency["llm_first_token"]))
    if "llm_first_sentence" in latency:
        bars.append(("LLM first sentence" + llm_tag, llm_start, first_sentence))
    if "tts_first_audio" in latency:
        bars.append(("TTS first audio", llm_start + first_sentence, tts))
    if "first_media_sent" in latency:
        bars.append(("gateway: first media sent", 0.0, latency["first_media_sent"]))
    return bars


def plot_waterfall(
    latency: dict[str, float], path: Path, title: str, heard_ms: float | None = None, preemptive: bool = False
) -> Path:
    bars = waterfall_bars(latency, preemptive)
    if heard_ms is not None:
        # The simulator's own clock and speech-end (its last voiced frame), not the STT's.
        bars.append(("caller: first audio heard (sim clock)", 0.0, heard_ms))
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(bars) + 1.8))
    colors = plt.get_cmap("tab10")
    for i, (_label, start, length) in enumerate(bars):
        ax.barh(i, length, left=start, color=colors(i % 10), height=0.6)
        ax.text(start + length + 5, i, f"{length:.0f} ms", va="center", fontsize=8)
    ax.set_yticks(range(len(bars)), [b[0] for b in bars], fontsize=9)
    ax.invert_yaxis()
    right = max((s + n for _, s, n in bars), default=1.0)
    left = min((s for _, s, _ in bars), default=0.0)
    ax.set_xlim(min(0.0, left * 1.1), right * 1.15 + 10)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("ms after the caller stopped speaking")
    overhead = latency.get("pipeline_overhead")
    sub = f"  (pipeline overhead {overhead:.1f} ms)" if overhead is not None else ""
    ax.set_title(title + sub, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
