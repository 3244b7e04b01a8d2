"""The soak's leak hunt: a second report names the line that kept memory since the first."""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

from voxline.memtrace import MemoryTrace

kept: list[bytes] = []


def test_the_second_report_names_what_grew_since_the_first(tmp_path: Path) -> None:
    trace = MemoryTrace(str(tmp_path), "stt")
    try:
        first = trace.report()
        kept.extend(bytes(1000) + bytes([i % 256]) for i in range(2000))  # about 2 MB held on purpose
        second = trace.report()
    finally:
        tracemalloc.stop()
        kept.clear()
    assert first.name.startswith("stt-") and "growth by line" not in first.read_text()
    text = second.read_text()
    growth = text.split("# growth by line since the previous report")[1].split("\n# ")[0]
    top = growth.strip().splitlines()[0]
    assert "test_memtrace.py" in top, text[:2000]
    grown_kib = int(re.search(r"\(\+(\d+) KiB\)", top).group(1))  # type: ignore[union-attr]
    assert 1900 <= grown_kib <= 2400
    assert "memtrace.py:" not in growth.replace("test_memtrace.py", "")  # its own bookkeeping is left out
