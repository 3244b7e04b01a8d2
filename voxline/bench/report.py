"""The bench's printed table: one line per level and scenario, the targets underneath."""

from __future__ import annotations

from typing import Any

HEADER = (
    f"{'level':>5} {'scenario':<13} {'calls':>5} {'ok':>4} {'err':>4} {'peak':>4} "
    f"{'turn p50/p95':>13} {'eot p50/p95':>12} {'ovh p50/p95':>12} {'stop p50/p95':>13} {'stale':>6} "
    f"{'bc lost/rep/new':>16} {'cut':>4} {'late99':>6} {'cpu sim/stack':>13}"
)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _ms1(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _pair(s: dict[str, Any], one_decimal: bool = False) -> str:
    f = _ms1 if one_decimal else _ms
    return f"{f(s.get('p50'))}/{f(s.get('p95'))}"


def format_row(row: dict[str, Any]) -> str:
    bc = row.get("backchannel")
    bc_cell = "-"
    if bc:
        bc_cell = f"{bc['with_lost_audio']}/{bc['with_repeated_audio']}/{bc['new_answers']}"
    stale = row.get("stale_ms")
    cpu = row.get("cpu") or {}
    sim, stack = cpu.get("sim_cores"), cpu.get("stack_cores")
    cpu_cell = f"{'-' if sim is None else f'{sim:.2f}'}/{'-' if stack is None else f'{stack:.2f}'}"
    return (
        f"{row['level']:>5} {row['scenario']:<13} {row['calls']:>5} {row['ok']:>4} {row['errors']:>4} "
        f"{row['peak_concurrency']:>4} {_pair(row['turn_latency_ms']):>13} "
        f"{_pair(row.get('end_of_turn_ms') or {}):>12} "
        f"{_pair(row['pipeline_overhead_ms'], True):>12} {_pair(row['barge_in_ms']):>13} "
        f"{_ms(stale['total']) if stale else '-':>6} {bc_cell:>16} {row.get('cut_offs', '-')!s:>4} "
        f"{_ms(row['sim_lateness_ms']['p99']):>6} {cpu_cell:>13}"
    )


LEGEND = """\
  turn: caller speech end -> first reply audio received (simulator clock, ms)
  eot:  call record latency.end_of_turn per reply turn: caller speech end -> turn judged over (ms)
  ovh:  call record latency.pipeline_overhead per reply turn (ms); target < 15 p95 at 200 calls
  stop: caller onset -> agent voice stops as heard (barge_in: interruption; backchannel: pause); target < 120 p95
  stale: ms of an interrupted turn heard after its voice stopped, summed over calls; target 0
  bc lost/rep/new: backchannel calls with lost reply audio / repeated reply audio / answers to the backchannel
  cut: slow-speaker calls answered before the caller finished
  late99: simulator's own send lateness p99 (ms); large values mean the load generator distorted the numbers
  cpu: cores used by the simulator processes / by the stack (nats-server + services)"""


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [HEADER, "-" * len(HEADER)]
    lines += [format_row(r) for r in rows]
    return "\n".join([*lines, "", LEGEND])


def format_hops(rows: list[dict[str, Any]]) -> str:
    """Where each row's pipeline overhead goes, hop by hop (call record medians, ms)."""
    hops = ("hop_brain", "hop_orchestrator", "hop_tts", "hop_gateway")
    lines = [f"{'level':>5} {'scenario':<13} " + " ".join(f"{h.removeprefix('hop_'):>12}" for h in hops)]
    for row in rows:
        split = row.get("overhead_hops_ms") or {}
        cells = [_ms1((split.get(h) or {}).get("p50")) for h in hops]
        lines.append(f"{row['level']:>5} {row['scenario']:<13} " + " ".join(f"{c:>12}" for c in cells))
    return "\n".join(["overhead by hop, p50 ms (transit beyond each provider's own time):", *lines])


def target_verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """The brief's targets, checked against the highest level that ran (informational)."""
    out: list[str] = []
    turns = [r for r in rows if r["scenario"] == "turns" and r["pipeline_overhead_ms"]["p95"] is not None]
    if turns:
        top = max(turns, key=lambda r: r["level"])
        p95 = top["pipeline_overhead_ms"]["p95"]
        out.append(f"pipeline overhead p95 at {top['level']} calls: {p95:.1f} ms (target < 15): {_ok(p95 < 15)}")
    barge = [r for r in rows if r["scenario"] == "barge_in" and r["barge_in_ms"]["p95"] is not None]
    if barge:
        worst = max(r["barge_in_ms"]["p95"] for r in barge)
        stale = sum(r["stale_ms"]["total"] for r in barge)
        out.append(f"barge-in voice stop p95, worst level: {worst:.0f} ms (target < 120): {_ok(worst < 120)}")
        out.append(f"cancelled audio heard after the stop: {stale:.0f} ms in total (target 0): {_ok(stale == 0)}")
    return out


def _ok(good: bool) -> str:
    return "met" if good else "NOT met"
