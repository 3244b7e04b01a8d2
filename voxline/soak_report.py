"""What a soak's memory samples say: does each service's RSS stay flat under steady load?

A process serving 100 calls needs more memory than an idle one (buffers, sessions,
allocator arenas sized for the peak), so RSS from the idle start to the end always grows;
that is the working set, not a leak. The question a soak answers is whether RSS keeps
growing *once the load is steady*: the samples after a warm-up (every call slot taken,
the first calls ended and replaced) get a least-squares line, and its slope times the
steady window is the growth a leak would show. A service is flat when that projected
growth stays within a tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOLERANCE_MIB = 3.0  # projected growth over the steady window still called flat
# Shown, not judged: nats-server is a Go process whose RSS follows its garbage collector's
# cycles (it swung between 73 and 127 MiB within each of two 10-minute soaks), so a line
# through a few samples of that sawtooth says nothing; and what it keeps on purpose, the
# call records JetStream stores, is bounded by the buckets' TTLs, not by the soak.
NOT_JUDGED = {"nats": "not judged: Go GC sawtooth"}


@dataclass(frozen=True)
class MemoryTrend:
    service: str
    idle_mib: float  # the first sample, before any call
    warm_mib: float  # the first sample after the warm-up
    end_mib: float  # after the last call ended
    slope_mib_per_min: float  # least squares over the samples after the warm-up
    steady_min: float  # how long the steady window lasted

    @property
    def projected_mib(self) -> float:
        """The growth the slope accounts for over the steady window."""
        return self.slope_mib_per_min * self.steady_min

    def flat(self, tolerance_mib: float = TOLERANCE_MIB) -> bool:
        return self.projected_mib <= tolerance_mib

    @property
    def judged(self) -> bool:
        return self.service not in NOT_JUDGED


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x; 0 for fewer than two distinct x."""
    if len(points) < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var


def memory_trends(samples: list[dict[str, Any]], warmup_s: float) -> list[MemoryTrend]:
    """One trend per service seen in `samples` (each `{"at_s", "services": {name: {"rss_mib"}}}`,
    oldest first). A service with no sample after the warm-up gets its last sample as
    both warm and end, and a zero slope."""
    names: list[str] = []
    for sample in samples:
        names += [n for n in sample["services"] if n not in names]
    trends = []
    for name in names:
        series = [(s["at_s"], s["services"][name]["rss_mib"]) for s in samples if name in s["services"]]
        steady = [(at, rss) for at, rss in series if at >= warmup_s]
        window = steady or series[-1:]
        minutes = [(at / 60.0, rss) for at, rss in window]
        trends.append(
            MemoryTrend(
                service=name,
                idle_mib=series[0][1],
                warm_mib=window[0][1],
                end_mib=series[-1][1],
                slope_mib_per_min=_slope(minutes),
                steady_min=(window[-1][0] - window[0][0]) / 60.0,
            )
        )
    return trends


def table(trends: list[MemoryTrend], tolerance_mib: float = TOLERANCE_MIB) -> list[str]:
    lines = [
        "service        idle -> warm -> end (MiB)   steady slope   over the window   flat",
    ]
    for t in trends:
        lines.append(
            f"{t.service:<14} {t.idle_mib:6.1f} -> {t.warm_mib:6.1f} -> {t.end_mib:6.1f}"
            f"   {t.slope_mib_per_min:+6.2f} MiB/min   {t.projected_mib:+6.1f} MiB"
            f"        {('yes' if t.flat(tolerance_mib) else 'NO') if t.judged else NOT_JUDGED[t.service]}"
        )
    return lines


def plot_memory(samples: list[dict[str, Any]], warmup_s: float, path: Path) -> Path:
    """RSS of each service over the soak, the warm-up shaded: a leak is a line that keeps
    climbing to the right of the shade."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    names: list[str] = []
    for sample in samples:
        names += [n for n in sample["services"] if n not in names]
    for name in names:
        series = [(s["at_s"] / 60, s["services"][name]["rss_mib"]) for s in samples if name in s["services"]]
        ax.plot([x for x, _ in series], [y for _, y in series], marker=".", label=name)
    ax.axvspan(0, warmup_s / 60, color="0.9", label="warm-up")
    ax.set_xlabel("minutes into the soak")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title("memory per service under steady load")
    ax.legend(loc="upper left", fontsize="small", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
