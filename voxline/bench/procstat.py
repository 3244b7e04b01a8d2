"""CPU use from /proc, without psutil: enough to tell the stack's load from the simulator's.

On a 2-core box the load generator competes with the system it measures, so the result
says how many cores each side burned; a simulator near a full core is a warning sign.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_s(pid: int) -> float | None:
    """utime + stime of one process in seconds; None if it is gone or /proc is missing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after its ')' are fixed.
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (IndexError, ValueError):
        return None


def total_cpu_s(pids: list[int]) -> float:
    return sum(v for v in (process_cpu_s(p) for p in pids) if v is not None)


def host_busy_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies over all cores since boot, from /proc/stat's first line."""
    try:
        line = Path("/proc/stat").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    values = [int(v) for v in line.split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_fraction(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of all cores busy between two host_busy_ticks() readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])
