"""Where a worker's memory goes, for a soak whose RSS grows: tracemalloc on demand.

Off by default: tracemalloc slows every allocation and keeps a trace per live block. With
VOXLINE_MEMORY_TRACE_DIR set, a worker (orchestrator, stt, brain, tts) traces its
allocations from the start, and each SIGUSR1 writes a report into that directory: the
allocation sites that grew most since the previous report, and the live objects whose
count by type changed. Two reports N calls apart, divided by N, give bytes and objects per
call: a leak keeps growing by the same amount per call; allocator and cache warm-up stops.

    VOXLINE_MEMORY_TRACE_DIR=/tmp/mem voxline soak --minutes 3 --calls 40 &
    kill -USR1 <stt pid>   # once warm, then again N calls later
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

log = logging.getLogger("voxline.memtrace")

FRAMES = 1  # the allocating line only: deeper tracebacks slow a loaded worker until its pings time out
TOP = 25


class MemoryTrace:
    """Snapshots of one process's allocations; `report()` writes the growth since the last."""

    def __init__(self, directory: str, service: str) -> None:
        self.directory = Path(directory)
        self.service = service
        self.reports = 0
        self._previous: tracemalloc.Snapshot | None = None
        self._types: Counter[str] = Counter()
        tracemalloc.start(FRAMES)

    def report(self) -> Path:
        gc.collect()  # what is still reachable, not what waits for a cycle collection
        ignored = [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, __file__),
            tracemalloc.Filter(False, "<frozen importlib.*"),
        ]
        snapshot = tracemalloc.take_snapshot().filter_traces(ignored)
        types = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
        traced, peak = tracemalloc.get_traced_memory()
        lines = [
            f"{self.service} pid {os.getpid()} report {self.reports} at {time.strftime('%H:%M:%S')}",
            f"traced {traced / 2**20:.2f} MiB (peak {peak / 2**20:.2f}), RSS {_rss_mib():.1f} MiB, "
            f"gc-tracked objects {sum(types.values())}, allocated blocks {sys.getallocatedblocks()}",
        ]
        if self._previous is not None:
            lines.append("\n# growth by line since the previous report")
            lines += [str(s) for s in snapshot.compare_to(self._previous, "lineno")[:TOP]]
            changed = {t: n - self._types.get(t, 0) for t, n in types.items() if n != self._types.get(t, 0)}
            lines.append("\n# live objects by type, change since the previous report")
            top = sorted(changed.items(), key=lambda kv: -abs(kv[1]))[:TOP]
            lines += [f"{diff:+8d}  {name} (now {types[name]})" for name, diff in top]
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.service}-{os.getpid()}-{self.reports:03d}.txt"
        path.write_text("\n".join(lines) + "\n")
        log.warning("memory report written to %s", path)
        self._previous, self._types = snapshot, types
        self.reports += 1
        return path


def _rss_mib() -> float:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:  # not Linux
        return 0.0
    line = next((x for x in status.splitlines() if x.startswith("VmRSS:")), "VmRSS: 0 kB")
    return int(line.split()[1]) / 1024
