"""`voxline bench`: every scenario at every concurrency level, then a table, JSON and plots.

It starts its own fake-provider stack with fixed provider latencies (or uses `--url`), so
what varies between runs is Voxline's own work. Benchmarks are not tests: nothing here
fails on a missed target; the targets are printed next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from voxline.bench.metrics import summarize
from voxline.bench.procstat import busy_fraction, host_busy_ticks, total_cpu_s
from voxline.bench.report import format_hops, format_row, format_table, target_verdicts
from voxline.bench.runner import run_level, workers_for
from voxline.bench.scenarios import SCENARIOS
from voxline.simulator.results import CallResult

FULL_LEVELS = "1,10,50,100,200"
QUICK_LEVELS = "1,10,50"
SETTLE_S = 1.0  # between runs, so one run's hang-ups do not load the next one's start


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="bench this running gateway instead of starting a fake stack")
    p.add_argument("--levels", default=None, help=f"concurrent calls per level (default {FULL_LEVELS})")
    p.add_argument("--quick", action="store_true", help=f"levels {QUICK_LEVELS}")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, of: " + ", ".join(SCENARIOS))
    p.add_argument(
        "--calls-per-level", type=int, default=0, metavar="N", help="calls per run (default: the level, at least 2)"
    )
    p.add_argument("--duration", type=float, default=90.0, metavar="S", help="no call starts after S s of a run")
    p.add_argument("--max-minutes", type=float, default=20.0, help="cap on the whole bench")
    p.add_argument("--call-timeout", type=float, default=60.0, metavar="S", help="cap on one call")
    p.add_argument("--ramp", type=float, default=3.0, metavar="S", help="spread call starts over S s")
    p.add_argument("--workers", type=int, default=0, help="simulator processes (0: one per --calls-per-worker)")
    p.add_argument("--calls-per-worker", type=int, default=50)
    p.add_argument("--out", default=None, help="result directory (default bench-results/<timestamp>/)")
    p.add_argument("--ttft-ms", type=int, default=_env_int("VOXLINE_FAKE_TTFT_MS", 150))
    p.add_argument("--tokens-per-s", type=float, default=float(os.environ.get("VOXLINE_FAKE_TOKENS_PER_S", 50)))
    p.add_argument("--ttfb-ms", type=int, default=_env_int("VOXLINE_FAKE_TTFB_MS", 60))
    p.add_argument("--stt-latency-ms", type=int, default=_env_int("VOXLINE_FAKE_STT_LATENCY_MS", 20))


def _provider_env(args: argparse.Namespace) -> dict[str, str]:
    return {
        "VOXLINE_FAKE_TTFT_MS": str(args.ttft_ms),
        "VOXLINE_FAKE_TOKENS_PER_S": str(args.tokens_per_s),
        "VOXLINE_FAKE_TTFB_MS": str(args.ttfb_ms),
        "VOXLINE_FAKE_STT_LATENCY_MS": str(args.stt_latency_ms),
        "VOXLINE_LOG_LEVEL": "WARNING",  # 200 calls of INFO logs would be load of their own
    }


class Bench:
    """One bench run: its settings, the rows so far, and where they are written."""

    def __init__(self, args: argparse.Namespace, out: Path, stack_pids: list[int], base_url: str) -> None:
        self.args = args
        self.out = out
        self.stack_pids = stack_pids
        self.base_url = base_url
        self.rows: list[dict[str, Any]] = []
        self.samples: dict[str, dict[str, Any]] = {}
        self.waterfall: dict[str, Any] | None = None
        self.deadline = time.time() + args.max_minutes * 60.0 - args.call_timeout
        self.auth_token = os.environ.get("TWILIO_AUTH_TOKEN") or None

    def run_one(self, level: int, scenario: str) -> dict[str, Any] | None:
        a = self.args
        if time.time() >= self.deadline:
            print(f"[{level:>3} calls] {scenario}: skipped, bench time cap reached", flush=True)
            return None
        calls = a.calls_per_level or max(level, 2)
        workers = a.workers or workers_for(level, a.calls_per_worker, 8)
        print(f"[{level:>3} calls] {scenario}: {calls} calls over {workers} simulator process(es)...", flush=True)
        stop_at = min(time.time() + a.duration, self.deadline)
        cpu0, host0, t0 = total_cpu_s(self.stack_pids), host_busy_ticks(), time.monotonic()
        try:
            shares = run_level(
                self.base_url, scenario, level, calls, workers, stop_at, a.call_timeout, a.ramp, self.auth_token
            )
        except Exception as exc:  # a dead worker process: report it, keep benching
            print(f"[{level:>3} calls] {scenario}: simulator failed: {exc!r}", flush=True)
            return None
        wall = time.monotonic() - t0
        results: list[CallResult] = [c for s in shares for c in s.calls]
        spans = [sp for s in shares for sp in s.spans]
        row = summarize(scenario, level, results, spans)
        row["skipped_calls"] = sum(s.skipped for s in shares)
        sim_wall = max((s.wall_s for s in shares), default=0.0)
        row["cpu"] = {
            "wall_s": round(wall, 1),
            "sim_cores": round(sum(s.cpu_s for s in shares) / sim_wall, 2) if sim_wall else None,
            "stack_cores": round((total_cpu_s(self.stack_pids) - cpu0) / wall, 2) if self.stack_pids else None,
            "host_busy": busy_fraction(host0, host_busy_ticks()),
            "workers": workers,
        }
        self.rows.append(row)
        self._keep_examples(scenario, results)
        print(f"  done in {wall:.0f} s\n  {format_row(row)}", flush=True)
        for err in row["error_samples"][:3]:
            print(f"  error: {err}", flush=True)
        self.write()
        return row

    def _keep_examples(self, scenario: str, results: list[CallResult]) -> None:
        good = [r for r in results if r.accepted and not r.errors and r.record]
        if good and scenario not in self.samples:
            self.samples[scenario] = good[0].to_dict()
        if scenario == "turns" and self.waterfall is None:
            self.waterfall = pick_waterfall_turn(good)

    def write(self) -> None:
        doc = {
            "started": self.out.name,
            "gateway": self.base_url,
            "config": {k: v for k, v in vars(self.args).items() if k != "func"},
            "results": self.rows,
            "targets": target_verdicts(self.rows),
            "waterfall_turn": self.waterfall,
            "sample_calls": self.samples,
        }
        (self.out / "results.json").write_text(json.dumps(doc, indent=1, default=str))


def pick_waterfall_turn(calls: list[CallResult]) -> dict[str, Any] | None:
    """The reply turn with the median first_media_sent: typical, not the best or worst."""
    found: list[tuple[float, dict[str, Any]]] = []
    for r in calls:
        heard = {t.turn_id: t.first_played_latency_ms for t in r.turns}
        for t in (r.record or {}).get("turns") or []:
            lat = t.get("latency") or {}
            if t.get("kind") == "reply" and "first_media_sent" in lat:
                entry = {"call_sid": r.call_sid, "turn_id": t.get("turn_id"), "latency": lat}
                entry["preemptive"] = bool(t.get("preemptive"))
                entry["first_played_ms"] = heard.get(t.get("turn_id"))
                found.append((float(lat["first_media_sent"]), entry))
    if not found:
        return None
    found.sort(key=lambda x: x[0])
    return found[len(found) // 2][1]


def _plots(bench: Bench) -> list[Path]:
    from voxline.bench.plots import plot_cdfs, plot_waterfall

    paths = [plot_cdfs(bench.rows, bench.out / "latency_cdf.png")]
    if bench.waterfall:
        w = bench.waterfall
        title = f"One turn across the services (call {w['call_sid'][:12]}..., turn {w['turn_id']})"
        png = bench.out / "waterfall.png"
        paths.append(plot_waterfall(w["latency"], png, title, w.get("first_played_ms"), w.get("preemptive", False)))
    return paths


def run_bench(args: argparse.Namespace) -> int:
    levels = [int(x) for x in (args.levels or (QUICK_LEVELS if args.quick else FULL_LEVELS)).split(",") if x]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown or not levels or min(levels) < 1:
        print(f"voxline bench: unknown scenarios {unknown} or bad levels {levels}", file=sys.stderr)
        return 2
    out = Path(args.out or Path("bench-results") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    stack = None
    if args.url is None:
        from voxline.devstack import DevStack, StackError, free_port

        env = _provider_env(args)
        print(f"voxline bench: starting a fake stack ({', '.join(f'{k}={v}' for k, v in env.items())})", flush=True)
        stack = DevStack(profile="fake", http_port=free_port(), log_dir=out / "logs", extra_env=env, verbose=False)
        try:
            stack.start(timeout=120)
        except StackError as exc:
            stack.stop()
            print(f"voxline bench: the stack did not start: {exc} (logs in {out / 'logs'})", file=sys.stderr)
            return 1
    base_url = args.url or (stack.gateway_url if stack else "")
    pids = [p.popen.pid for p in (stack.processes.values() if stack else []) if p.popen is not None]
    bench = Bench(args, out, pids, base_url)
    print(f"voxline bench: levels {levels}, scenarios {scenarios}, results in {out}/", flush=True)
    try:
        for level in levels:
            for scenario in scenarios:
                bench.run_one(level, scenario)
                time.sleep(SETTLE_S)
    except KeyboardInterrupt:
        print("voxline bench: interrupted; writing what ran", file=sys.stderr)
    finally:
        if stack is not None:
            stack.stop()
    bench.write()
    print("\n" + format_table(bench.rows) + "\n")
    print(format_hops(bench.rows) + "\n")
    for verdict in target_verdicts(bench.rows):
        print("target: " + verdict)
    if bench.rows:
        for path in _plots(bench):
            print(f"plot: {path}")
    print(f"results: {out / 'results.json'}")
    return 0 if bench.rows else 1
