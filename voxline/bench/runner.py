"""Runs one scenario at one concurrency level across worker processes.

One Python process cannot model 200 real-time phone lines (10,000 frames a second, plus
playback and mark echoes) next to the stack on two cores without its own scheduling
delays leaking into the numbers, so the calls are split over a few processes, each an
asyncio loop running its share. Each worker reports its own CPU and how late its frames
went out, so a reader can tell a slow stack from a slow load generator.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from voxline.bench.scenarios import ENDURANCE, SCENARIOS
from voxline.simulator.caller import prepare_audio, run_call
from voxline.simulator.results import CallResult
from voxline.simulator.script import CallScript
from voxline.simulator.voice import SpeechFrames


@dataclass(frozen=True)
class ShareSpec:
    """One worker's part of a run: its calls, how many at once, and when to stop."""

    base_url: str
    scenario: str
    first_index: int  # global index of its first call (varies the scripts' wording)
    calls: int
    slots: int  # calls this worker keeps in flight
    slot_offset: int  # global index of its first slot, for a ramp that is even overall
    total_slots: int
    ramp_s: float  # all slots have started after this long
    stop_at: float  # wall clock: no call starts after this
    call_timeout_s: float
    auth_token: str | None = None


@dataclass
class ShareResult:
    calls: list[CallResult] = field(default_factory=list)
    spans: list[tuple[float, float]] = field(default_factory=list)  # wall-clock start, end per call
    cpu_s: float = 0.0
    wall_s: float = 0.0
    skipped: int = 0  # calls never started because the time cap came first


def _prepare(scripts: list[CallScript]) -> list[list[SpeechFrames]]:
    """Synthesise each distinct utterance once; calls share the (read-only) frames."""
    cache: dict[tuple[str, ...], list[SpeechFrames]] = {}
    out: list[list[SpeechFrames]] = []
    for s in scripts:
        key = tuple(u.label() for u in s.utterances)
        if key not in cache:
            frames = [prepare_audio(u) for u in s.utterances]
            for f in frames:
                _ = f.frames_b64  # encode now, not during the first call's send loop
            cache[key] = frames
        out.append(cache[key])
    return out


async def _one(spec: ShareSpec, script: CallScript, audio: list[SpeechFrames]) -> CallResult:
    try:
        return await asyncio.wait_for(
            run_call(spec.base_url, script, auth_token=spec.auth_token, prepared=audio), spec.call_timeout_s
        )
    except TimeoutError:
        error = f"call exceeded the bench's {spec.call_timeout_s:.0f} s cap"
    except Exception as exc:  # one broken call must not sink the level
        error = f"simulator crashed: {exc!r}"
    result = CallResult(call_sid=script.call_sid or "", agent_id=script.agent_id)
    result.errors.append(error)
    return result


async def _run_share(spec: ShareSpec, scripts: list[CallScript], audio: list[list[SpeechFrames]]) -> ShareResult:
    out = ShareResult()
    next_call = 0

    async def slot(k: int) -> None:
        nonlocal next_call
        global_slot = spec.slot_offset + k
        await asyncio.sleep(spec.ramp_s * global_slot / max(1, spec.total_slots))
        while next_call < len(scripts) and time.time() < spec.stop_at:
            i = next_call
            next_call += 1
            start = time.time()
            result = await _one(spec, scripts[i], audio[i])
            out.calls.append(result)
            out.spans.append((start, time.time()))

    await asyncio.gather(*(slot(k) for k in range(spec.slots)))
    out.skipped = len(scripts) - next_call
    return out


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when present (uvicorn[standard] brings it): its C transports roughly halve
    the per-frame cost of the send loop; the stdlib loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_share(spec: ShareSpec) -> ShareResult:
    """Worker entry point (module-level so a spawned process can import it)."""
    build = {**SCENARIOS, **ENDURANCE}[spec.scenario].build
    scripts = [build(spec.first_index + i) for i in range(spec.calls)]
    audio = _prepare(scripts)
    cpu0, wall0 = time.process_time(), time.monotonic()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        out = runner.run(_run_share(spec, scripts, audio))
    out.cpu_s = time.process_time() - cpu0
    out.wall_s = time.monotonic() - wall0
    return out


def split(total: int, parts: int) -> list[int]:
    """`total` as `parts` near-equal non-negative integers, larger ones first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def workers_for(level: int, calls_per_worker: int, max_workers: int) -> int:
    return max(1, min(max_workers, math.ceil(level / max(1, calls_per_worker)), level))


def run_level(
    base_url: str,
    scenario: str,
    level: int,
    calls: int,
    workers: int,
    stop_at: float,
    call_timeout_s: float,
    ramp_s: float,
    auth_token: str | None = None,
) -> list[ShareResult]:
    """`calls` calls of `scenario`, `level` at a time, over `workers` processes."""
    slot_shares = split(level, workers)
    call_shares = split(calls, workers)
    specs: list[ShareSpec] = []
    first = slot_off = 0
    for slots, n in zip(slot_shares, call_shares, strict=True):
        specs.append(
            ShareSpec(base_url, scenario, first, n, slots, slot_off, level, ramp_s, stop_at, call_timeout_s, auth_token)
        )
        first += n
        slot_off += slots
    context = multiprocessing.get_context("spawn")  # no forked asyncio or BLAS state
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(run_share, specs))
