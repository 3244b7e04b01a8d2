"""`voxline chaos` and `voxline soak`: the long runs that are not part of `make test`.

chaos: calls go on for minutes on a stack with `--replicas` instances of every service,
while a random process is killed (`kill -9`) every few seconds and restarted a moment later
(what Kubernetes does to a crashed pod). It prints what the callers lived through: calls
completed, turns answered, the longest wait for a reply, caller words that never reached
the record, and audio of a cancelled reply heard after its stop.

soak: many calls for many minutes on one stack, sampling every service's memory (RSS) and
per-call state (`/status`) from start to end: per-call state must come back to zero once the
calls end, and memory must stay flat once the load is steady (voxline/soak_report.py).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from voxline.bench.runner import run_level
from voxline.devstack import DevStack, StackError, free_ports_in_a_row, ports_for
from voxline.simulator.results import CallResult, TurnResult
from voxline.soak_report import memory_trends, plot_memory, table

FAKE_PROVIDERS = {
    "VOXLINE_FAKE_TTFT_MS": "150",
    "VOXLINE_FAKE_TTFB_MS": "60",
    "VOXLINE_FAKE_STT_LATENCY_MS": "20",
}


def add_arguments(chaos: argparse.ArgumentParser, soak: argparse.ArgumentParser) -> None:
    chaos.add_argument("--calls", type=int, default=20, help="calls in flight at any time")
    chaos.add_argument("--minutes", type=float, default=5.0)
    chaos.add_argument("--kill-every", type=float, default=20.0, help="seconds between two kills")
    chaos.add_argument("--restart-after", type=float, default=2.0, help="seconds a killed process stays down")
    chaos.add_argument("--replicas", type=int, default=2, help="instances of every service")
    chaos.add_argument("--seed", type=int, default=0, help="which processes get killed (0: random)")
    chaos.add_argument("--out", default="", help="results directory (default chaos-results/<time>)")
    soak.add_argument("--calls", type=int, default=100, help="calls in flight at any time")
    soak.add_argument("--minutes", type=float, default=10.0)
    soak.add_argument("--sample-every", type=float, default=30.0, help="seconds between two samples")
    soak.add_argument(
        "--warmup", type=float, default=120.0, help="seconds before the load counts as steady (memory trend)"
    )
    soak.add_argument("--out", default="", help="results directory (default soak-results/<time>)")


def _stack(out: Path, replicas: int, log_level: str) -> DevStack:
    stack = DevStack(
        profile="fake",
        http_port=free_ports_in_a_row(ports_for(replicas)),
        log_dir=out / "logs",
        extra_env={**FAKE_PROVIDERS, "VOXLINE_LOG_LEVEL": log_level},
        replicas=replicas,
    )
    stack.start()
    return stack


def _load(stack: DevStack, calls_in_flight: int, minutes: float) -> list[CallResult]:
    """Calls of the `long_call` scenario, `calls_in_flight` at a time, until `minutes` pass."""
    per_call_s = 40.0  # a long call lasts about 30 s; more scripts than can run is fine
    total = calls_in_flight * (int(minutes * 60 / per_call_s) + 2)
    workers = max(1, min(4, calls_in_flight // 25 + 1))
    stop_at = time.time() + minutes * 60
    shares = run_level(stack.gateway_url, "long_call", calls_in_flight, total, workers, stop_at, 180.0, 5.0)
    return [c for s in shares for c in s.calls]


def _normal(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def _said_on(r: CallResult, turn_id: int | None) -> bool:
    """A reply cut by a break (a gateway or orchestrator died) whose rest was said in a new
    turn (the record's `continues`) and heard to the end: the caller got the whole answer."""
    turns = (r.record or {}).get("turns", [])
    while turn_id is not None:
        rest = next((t for t in turns if t.get("continues") == turn_id), None)
        if rest is None:
            return False
        if not rest.get("interrupted") and rest.get("heard_text") == rest.get("reply_text"):
            return True
        turn_id = rest.get("turn_id")
    return False


def _answered_again(r: CallResult, text: str, turn_id: int | None) -> bool:
    """A question whose reply was cut by a break before the snapshot held it, answered
    again whole by the orchestrator that took the call over (a newer turn of the record
    with the caller's words, heard to its end)."""
    asked = _normal(text)
    for t in (r.record or {}).get("turns", []):
        newer = turn_id is None or int(t.get("turn_id", 0)) > turn_id
        heard_whole = not t.get("interrupted") and t.get("heard_text") and t.get("heard_text") == t.get("reply_text")
        if newer and heard_whole and _normal(str(t.get("caller_text", ""))) == asked:
            return True
    return False


def _answered(r: CallResult, t: TurnResult) -> bool:
    return t.completed or _said_on(r, t.turn_id) or _answered_again(r, t.text, t.turn_id)


@dataclass
class CallerView:
    """What the callers lived through, from the simulator's side and the call records."""

    calls: int = 0
    completed: int = 0  # every turn answered to the end, no error
    cut: int = 0  # ended with an error (a gateway killed under it, a refused start...)
    turns_asked: int = 0
    turns_answered: int = 0
    longest_wait_ms: float = 0.0  # caller's last word -> first reply audio, worst turn
    # Caller's last word -> first reply audio played to them, worst answered turn: the
    # longest silence a caller sat through waiting for an answer.
    longest_silence_ms: float = 0.0
    unanswered: int = 0  # turns that never got their reply played to the end
    streams_broken: int = 0  # media streams that ended under a caller (a gateway killed)
    streams_resumed: int = 0  # ... and came back through Twilio's <Connect action>
    longest_stream_gap_ms: float = 0.0
    # Caller words missing from the record of a call that went on (a moved call's new fake
    # STT worker goes on with the script's next line: SttAssign.finals_heard).
    words_lost: int = 0
    stale_ms: float = 0.0  # cancelled reply audio heard after its stop
    errors: list[str] = field(default_factory=list)  # what cut calls, first few kinds

    @classmethod
    def of(cls, results: list[CallResult]) -> CallerView:
        v = cls(calls=len(results))
        for r in results:
            v.turns_asked += len(r.turns)
            answered = [t for t in r.turns if _answered(r, t)]
            v.turns_answered += len(answered)
            if r.accepted and not r.errors and len(answered) == len(r.turns):
                v.completed += 1
            elif r.errors or not r.accepted:
                v.cut += 1
                for error in r.errors or [f"not accepted: {r.close_reason}"]:
                    if error not in v.errors and len(v.errors) < 5:
                        v.errors.append(error)
            waits = [t.first_media_latency_ms for t in r.turns if t.first_media_latency_ms is not None]
            v.longest_wait_ms = max([v.longest_wait_ms, *waits])
            silences = [t.first_played_latency_ms for t in r.turns if t.first_played_latency_ms is not None]
            v.longest_silence_ms = max([v.longest_silence_ms, *silences])
            v.unanswered += len(r.turns) - len(answered)
            v.streams_broken += len(r.stream_breaks)
            gaps = [b.gap_ms for b in r.stream_breaks if b.gap_ms is not None]
            v.streams_resumed += len(gaps)
            v.longest_stream_gap_ms = max([v.longest_stream_gap_ms, *gaps])
            v.stale_ms += sum(b.cancelled_audio_heard_after_ms for b in r.barge_ins)
            if r.record and not r.errors:
                said = " ".join(_normal(str(t.get("caller_text", ""))) for t in r.record.get("turns", []))
                for t in answered:
                    v.words_lost += sum(1 for w in _normal(t.text).split() if w not in said.split())
        return v

    def lines(self) -> list[str]:
        return [
            f"calls: {self.calls}, completed {self.completed}, cut {self.cut}",
            f"turns answered: {self.turns_answered} of {self.turns_asked}",
            f"longest wait for a reply: {self.longest_wait_ms:.0f} ms (sent), "
            f"longest silence heard: {self.longest_silence_ms:.0f} ms (played)",
            f"media streams broken: {self.streams_broken}, resumed on another gateway: {self.streams_resumed}"
            f" (longest gap {self.longest_stream_gap_ms:.0f} ms)",
            f"caller words lost: {self.words_lost}",
            f"stale audio heard: {self.stale_ms:.0f} ms",
            *(f"  cut by: {e}" for e in self.errors),
        ]


def run_chaos(args: argparse.Namespace) -> int:
    out = Path(args.out or f"chaos-results/{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed or None)
    try:
        stack = _stack(out, args.replicas, "INFO")  # what each kill did, in the logs
    except StackError as exc:
        print(f"voxline chaos: {exc}")
        return 1
    kills: list[dict[str, Any]] = []
    done = threading.Event()
    started = time.monotonic()

    def killer() -> None:
        while not done.wait(args.kill_every):
            key = rng.choice([k for k in stack.processes if k not in ("nats", "llm", "front_door")])
            proc = stack.processes[key]
            pid = proc.popen.pid if proc.popen else 0
            proc.kill()
            at = time.monotonic() - started
            print(f"[{at:6.1f} s] kill -9 {key} (pid {pid})", flush=True)
            if done.wait(args.restart_after):
                break
            try:
                stack.restart(key)
            except StackError as exc:
                print(f"[{time.monotonic() - started:6.1f} s] {key} did not come back: {exc}", flush=True)
            kills.append({"at_s": round(at, 1), "process": key})

    thread = threading.Thread(target=killer, daemon=True)
    print(f"voxline chaos: {args.calls} calls for {args.minutes:g} min, a kill every {args.kill_every:g} s", flush=True)
    thread.start()
    try:
        results = _load(stack, args.calls, args.minutes)
    finally:
        done.set()
        thread.join()
        stack.stop()
    view = CallerView.of(results)
    print("\n" + "\n".join([f"kills: {len(kills)}", *view.lines()]))
    (out / "results.json").write_text(json.dumps({"kills": kills, "callers": view.__dict__}, indent=2))
    (out / "calls.json").write_text(json.dumps([_call_summary(r) for r in results], indent=1))
    print(f"results: {out}/results.json, each call: {out}/calls.json")
    return 0


def _call_summary(r: CallResult) -> dict[str, Any]:
    """What a reader needs to find why a call's turn went unanswered: its turns, its stream
    breaks, and how the record says it ended (then `grep <call_sid>` in the service logs)."""
    record = r.record or {}
    return {
        "call_sid": r.call_sid,
        "turns": [
            {"text": t.text, "completed": t.completed, "wait_ms": t.first_media_latency_ms, "turn_id": t.turn_id}
            for t in r.turns
        ],
        "stream_breaks": [asdict(b) for b in r.stream_breaks],
        "errors": r.errors,
        "notes": r.notes,
        "end_reason": record.get("end_reason"),
        "record_turns": [
            {k: t.get(k) for k in ("turn_id", "kind", "caller_text", "cancel_reason")} for t in record.get("turns", [])
        ],
    }


def _sample(stack: DevStack) -> dict[str, dict[str, Any]]:
    """Each service's RSS (MiB) and the per-call state its /status reports."""
    row: dict[str, dict[str, Any]] = {}
    for key, proc in stack.processes.items():
        if proc.popen is None or key in ("llm",):
            continue
        try:
            status_text = Path(f"/proc/{proc.popen.pid}/status").read_text()
            rss_kib = int(re.search(r"VmRSS:\s+(\d+)", status_text).group(1))  # type: ignore[union-attr]
        except (OSError, AttributeError):
            continue
        entry: dict[str, Any] = {"rss_mib": round(rss_kib / 1024, 1)}
        if proc.health_url:
            try:
                status = httpx.get(proc.health_url.replace("/readyz", "/status"), timeout=2).json()
                entry["held"] = status.get("active_calls", status.get("active", 0))
                entry["subscriptions"] = status.get("subscriptions", 0)
            except (httpx.HTTPError, ValueError):
                entry["held"] = None
        row[key] = entry
    return row


def run_soak(args: argparse.Namespace) -> int:
    out = Path(args.out or f"soak-results/{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    try:
        stack = _stack(out, 1, "WARNING")  # 100 calls of INFO logs would be load of their own
    except StackError as exc:
        print(f"voxline soak: {exc}")
        return 1
    samples: list[dict[str, Any]] = []
    done = threading.Event()
    started = time.monotonic()

    def sampler() -> None:
        while True:
            at, services = round(time.monotonic() - started, 1), _sample(stack)
            samples.append({"at_s": at, "services": services})
            shown = [(k, v) for k, v in services.items() if k != "nats"]
            cells = "  ".join(f"{k} {v['rss_mib']:.0f}M/{v.get('held', '-')}" for k, v in shown)
            print(f"[{at:6.1f} s] rss/held: {cells}", flush=True)
            if done.wait(args.sample_every):
                return

    thread = threading.Thread(target=sampler, daemon=True)
    print(f"voxline soak: {args.calls} calls for {args.minutes:g} min", flush=True)
    thread.start()
    try:
        results = _load(stack, args.calls, args.minutes)
        done.set()
        thread.join()
        time.sleep(3)  # the last calls' releases travel over the bus
        final = _sample(stack)
    finally:
        done.set()
        stack.stop()
    samples.append({"at_s": round(time.monotonic() - started, 1), "services": final})
    trends = memory_trends(samples, args.warmup)
    print("", *table(trends), sep="\n")
    held_at_end = {key: end.get("held") for key, end in final.items()}
    released = all(held in (0, None) for held in held_at_end.values())
    print("per-call state at the end: " + ", ".join(f"{k} {v}" for k, v in held_at_end.items() if v is not None))
    view = CallerView.of(results)
    flat = all(t.flat() for t in trends if t.judged)
    print(
        "\n".join(
            [
                "",
                *view.lines(),
                f"per-call state released everywhere: {'yes' if released else 'NO'}",
                f"memory flat after the warm-up ({args.warmup:g} s) in every service: {'yes' if flat else 'NO'}",
            ]
        )
    )
    payload = {
        "samples": samples,
        "final": final,
        "callers": view.__dict__,
        "memory": [{**t.__dict__, "projected_mib": t.projected_mib, "flat": t.flat()} for t in trends],
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    plot = plot_memory(samples, args.warmup, out / "memory.png")
    print(f"results: {out}/results.json, {plot}")
    return 0
