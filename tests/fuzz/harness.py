"""Time-bounded hypothesis runs, counted per target, for `make fuzz` and its smoke version.

Hypothesis bounds a run by examples, not by time, so a target runs in batches: each batch
is one hypothesis run (fresh random seed, shrinking on failure, no example database) and
batches follow each other until the target's time is up. A failing batch does not stop
the target: its shrunk example is kept (one per distinct crash site) and the search goes
on, so one run reports every different crash it found, not only the first.

`VOXLINE_FUZZ_MINUTES` (set by `make fuzz`) turns the long mode on: the minutes are
shared out over the targets. Without it (`make test`) every target runs one small batch.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from hypothesis import HealthCheck, Phase, settings

ENV_MINUTES = "VOXLINE_FUZZ_MINUTES"
# Each target's share of the minutes: the live stack's targets, slower per input, get more.
SHARES = {
    "twilio event parser": 3,
    "twilio outbound": 1,
    "audio frame decode": 2,
    "audio frame roundtrip": 1,
    "agent toml": 3,
    "twilio webhooks": 3,
    "http api (openapi)": 4,
    "live call + garbage": 4,
}
SMOKE_EXAMPLES = 40  # per target when `make test` runs them
STACK_START_S = 15.0  # held back from the minutes: collection, the live stack's start, overruns
PROGRESS_EVERY_S = 10.0
HERE = str(Path(__file__).parent)
REPO = str(Path(__file__).parents[2])
VENV = str(Path(__file__).parents[2] / ".venv")


def full_mode() -> bool:
    return bool(os.environ.get(ENV_MINUTES))


def target_seconds(target: str) -> float:
    """The target's share of VOXLINE_FUZZ_MINUTES (0 in smoke mode: one batch)."""
    if not full_mode():
        return 0.0
    total = float(os.environ[ENV_MINUTES]) * 60.0
    return max(5.0, (total - STACK_START_S) * SHARES[target] / sum(SHARES.values()))


def pytest_timeout_s() -> float:
    """pytest-timeout for one target: all the minutes, plus room for a last batch to shrink."""
    return float(os.environ.get(ENV_MINUTES) or 0) * 60.0 + 240.0


def progress(text: str) -> None:
    """Printed past pytest's capture in long mode: a fuzz run of minutes must show it lives."""
    if full_mode():
        print(f"[fuzz] {text}", file=sys.__stderr__, flush=True)


@dataclass
class Count:
    target: str
    inputs: int = 0
    batches: int = 0
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)  # crash site -> first report of it

    @contextmanager
    def trying(self, *inputs: object) -> Iterator[None]:
        """One input: counted, and named in the report if it fails (hypothesis elides big ones)."""
        self.inputs += 1
        try:
            yield
        except BaseException as exc:
            exc.add_note("input: " + ", ".join(_short(i) for i in inputs))
            raise

    def line(self) -> str:
        return (
            f"{self.target:<22} {self.inputs:>9} inputs  {len(self.failures):>3} failures  "
            f"{self.seconds / 60:6.2f} min  ({self.batches} batches)"
        )


COUNTS: list[Count] = []
_shrinking = [True]  # whether the batch being built shrinks its failures


class Finding(AssertionError):
    """A property broken at a place the target names itself (an endpoint, not a line of
    the HTTP client): one failure per place in the counts."""

    def __init__(self, site: str, message: str) -> None:
        super().__init__(f"{site}: {message}")
        self.site = site


class Hang(Exception):
    """One input took longer than its bound: a hang as far as the property goes."""


@contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Raise `Hang` in this (main) thread after `seconds`. pytest-timeout's own alarm, if
    set, is put back afterwards with what remained of it."""

    def on_alarm(_signum: int, _frame: FrameType | None) -> None:
        raise Hang(f"input not handled within {seconds}s")

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    outer, _interval = signal.getitimer(signal.ITIMER_REAL)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(0.001, outer - (time.monotonic() - started)))


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 300 else f"{text[:240]}...{text[-40:]} ({len(text)} chars)"


def _site(exc: BaseException) -> str:
    """Where a crash happened: the exception type and the innermost frame of our code."""
    if isinstance(exc, Finding):
        return exc.site
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f.filename.startswith(REPO) and not f.filename.startswith((HERE, VENV))]
    where = ours[-1] if ours else (frames[-1] if frames else None)
    return f"{type(exc).__name__} at {where.filename}:{where.lineno}" if where else type(exc).__name__


def _report(exc: BaseException) -> str:
    notes = "\n".join(dict.fromkeys(n for n in getattr(exc, "__notes__", []) if n.startswith("input: ")))
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return f"{text[:1500]}\n{notes[:3000]}"


def batch_settings(examples: int, **extra: Any) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,  # hangs are bounded by `bounded`/timeouts per input, not by timing noise
        database=None,  # nothing written into the work tree; a failure is reported, not replayed
        derandomize=not full_mode(),  # `make test` tries the same inputs every run; `make fuzz` new ones
        suppress_health_check=list(HealthCheck),
        # Shrink a target's first failure to its smallest input; after that, a known failure
        # found again would only spend the target's minutes shrinking it again.
        phases=[Phase.generate, Phase.target] + ([Phase.shrink] if _shrinking[0] else []),
        print_blob=False,
        **extra,
    )


def run_target(name: str, make_batch: Callable[[Count, int], Callable[[], None]], batch_examples: int = 500) -> Count:
    """Run batches of `make_batch(count, examples)()` until the target's time is up (one
    batch in smoke mode); the property inside adds 1 to `count.inputs` per input."""
    count = Count(name)
    COUNTS.append(count)
    budget = target_seconds(name)
    started = time.monotonic()
    examples = batch_examples if full_mode() else SMOKE_EXAMPLES
    progress(f"{name}: {budget:.0f}s")
    shown = started
    while True:
        _shrinking[0] = not count.failures
        count.batches += 1
        try:
            make_batch(count, examples)()
        except Exception as exc:
            # Several distinct bugs in one batch come as a group: each is its own failure.
            for one in exc.exceptions if isinstance(exc, ExceptionGroup) else [exc]:
                site = _site(one)
                if site not in count.failures:
                    count.failures[site] = _report(one)
                    progress(f"{name}: NEW FAILURE {site}")
        count.seconds = time.monotonic() - started
        if count.seconds >= budget:
            break
        if time.monotonic() - shown >= PROGRESS_EVERY_S:
            shown = time.monotonic()
            progress(f"{name}: {count.inputs} inputs, {len(count.failures)} failures, {count.seconds:.0f}s")
    progress(count.line())
    return count


def assert_clean(count: Count) -> None:
    assert count.inputs > 0, f"{count.target}: no input was tried"
    if count.failures:
        details = "\n\n".join(f"--- {site}\n{report}" for site, report in count.failures.items())
        raise AssertionError(f"{count.target}: {len(count.failures)} distinct failure(s)\n{details}")
