"""A real Prometheus scrapes a real stack (fake providers) while simulated calls run; then
every query of every dashboard panel, and the measured expression of every alert rule,
must return data from it. The main dashboard is drawn from the same answers: with
VOXLINE_DASHBOARD_PNG=docs/dashboard.png the picture in the README is rewritten.

Series that exist only after an event are produced by the calls placed here: a barge-in
(voice stop, interruptions), a backchannel (backchannels). Provider errors and tool calls
(which the fake providers never make), call outcomes, and the slow-consumer gauge exist
at zero from the start (services/providers.py, services/brain/providers/base.py,
services/orchestrator/metrics.py, voxline/metrics.py)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.grafana.dashboards import ALERTS
from deploy.grafana.generate import ALERTS_FILE, DASHBOARD_DIR
from deploy.grafana.picture import Answers, draw
from tests.deploy.conftest import TraceSink
from tests.integration.conftest import AUTH_TOKEN, script_for
from voxline.devstack import DevStack, Process, free_port
from voxline.simulator import Utterance, run_calls

pytestmark = pytest.mark.integration

WORKERS = ("orchestrator", "stt", "brain", "tts")
LONG_QUESTION = "tell me everything about your clinic and the services you offer"
# The macros Grafana fills in: windows long enough to cover the whole test run.
CHECK_MACROS = {"$__rate_interval": "5m", "$__range": "10m"}


@dataclass
class Scraped:
    url: str
    start: float
    end: float
    calls: int

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr, "time": at or self.end}, timeout=10)
        body = answer.json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def query_range(self, expr: str, step: float) -> list[dict[str, Any]]:
        params: dict[str, str | float] = {"query": expr, "start": self.start, "end": self.end, "step": step}
        body = httpx.get(f"{self.url}/api/v1/query_range", params=params, timeout=10).json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def scrape_config(stack: DevStack) -> str:
    """One job per service, as deploy/prometheus/prometheus.yml has them; scraped every
    second so the test sees the calls within seconds."""
    targets = {name: stack.health_port(name) for name in ("gateway", *WORKERS)}  # the gateway's internal port
    jobs = [{"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]} for job, port in targets.items()]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS_FILE)],
        "scrape_configs": jobs,
    }
    return json.dumps(config)  # JSON is YAML


def poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for a condition the system exposes, up to a deadline (no sleep stands in for it)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def value(scraped: Scraped, expr: str) -> float:
    result = scraped.query(expr, at=time.time())
    return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture(scope="module")
def scraped(stack: DevStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus comes with the Debian package (make system-deps)"
    work = tmp_path_factory.mktemp("prometheus")
    (work / "prometheus.yml").write_text(scrape_config(stack))
    port = free_port()
    args = [
        binary,
        f"--config.file={work / 'prometheus.yml'}",
        f"--storage.tsdb.path={work / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--enable-feature=exemplar-storage",
    ]
    with open(work / "prometheus.log", "ab") as log:
        server = Process("prometheus", args, dict(os.environ), log)
        server.start()
        try:
            url = f"http://127.0.0.1:{port}"
            s = Scraped(url, time.time(), 0.0, 0)
            poll(lambda: _up(s) == 1 + len(WORKERS), 60, "Prometheus to scrape all five services")
            calls_before = value(s, "sum(voxline_calls_total)")
            results = asyncio.run(_place_calls(stack))
            assert all(r.accepted and not r.errors for r in results), [r.errors for r in results]
            s.calls = len(results)
            # The record of each call is final when it ends; Prometheus has it one scrape later.
            poll(lambda: value(s, "sum(voxline_calls_total)") >= calls_before + s.calls, 30, "the calls' outcomes")
            poll(lambda: value(s, "sum(voxline_barge_in_voice_stop_seconds_count)") >= 1, 30, "the barge-in")
            poll(lambda: value(s, "sum(voxline_backchannels_total)") >= 1, 30, "the backchannel")
            poll(lambda: value(s, "sum(voxline_orchestrator_active_calls)") == 0, 30, "every call to be let go")
            s.end = time.time()
            yield s
        finally:
            server.stop()
            if not server.alive and os.environ.get("VOXLINE_KEEP_LOGS"):
                print((work / "prometheus.log").read_text()[-3000:])


def _up(s: Scraped) -> int:
    try:
        return sum(1 for r in s.query("up == 1", at=time.time()))
    except (httpx.HTTPError, ValueError):  # not listening yet, or not answering JSON yet
        return 0


async def _place_calls(stack: DevStack) -> list[Any]:
    """Plain two-turn calls, one barge-in (words over the reply) and one backchannel."""
    scripts = [
        script_for(Utterance(text="what are your opening hours"), Utterance(text="do you take my insurance")),
        script_for(Utterance(text="can I book a cleaning"), Utterance(text="thank you")),
        script_for(Utterance(text=LONG_QUESTION), Utterance(text="stop, I have a question", barge_in_after_ms=600)),
        script_for(Utterance(text=LONG_QUESTION), Utterance(text="uh-huh", barge_in_after_ms=700, expects_reply=False)),
    ]
    return await run_calls(stack.gateway_url, scripts, auth_token=AUTH_TOKEN)


def fill(expr: str, macros: dict[str, str]) -> str:
    for macro, replacement in macros.items():
        expr = expr.replace(macro, replacement)
    return expr


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a number (a quantile of nothing is NaN: no data)."""
    return any(math.isfinite(float(r["value"][1])) for r in result)


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def test_every_dashboard_query_returns_data(scraped: Scraped) -> None:
    checked, empty = 0, []
    for uid, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                checked += 1
                expr = fill(target["expr"], CHECK_MACROS)
                if not has_data(scraped.query(expr)):
                    empty.append(f"{uid} / {panel['title']}: {expr}")
    assert checked >= 20
    assert not empty, "queries without data:\n" + "\n".join(empty)
    print(f"{checked} dashboard queries returned data")


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a.name)
def test_every_alert_measures_something(scraped: Scraped, alert: Any) -> None:
    assert has_data(scraped.query(alert.expr)), alert.expr
    scraped.query(alert.rule()["expr"])  # the rule itself is valid PromQL to this Prometheus (it may not fire)
    rules = httpx.get(f"{scraped.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {r["name"]: r for g in rules for r in g["rules"]}
    assert loaded[alert.name]["health"] == "ok", loaded[alert.name]


def test_exemplars_lead_from_the_turn_latency_to_a_kept_trace(scraped: Scraped, traces: TraceSink) -> None:
    params: dict[str, str | float] = {
        "query": "voxline_turn_latency_seconds_bucket",
        "start": scraped.start,
        "end": scraped.end,
    }
    body = httpx.get(f"{scraped.url}/api/v1/query_exemplars", params=params, timeout=10).json()
    assert body["status"] == "success", body
    trace_ids = {e["labels"].get("trace_id", "") for series in body["data"] for e in series["exemplars"]}
    assert trace_ids and all(len(t) == 32 for t in trace_ids), trace_ids
    poll(lambda: trace_ids <= traces.received(), 30, "the exemplars' traces to be exported")


def test_the_main_dashboard_is_drawn_from_prometheus_answers(scraped: Scraped, tmp_path: Path) -> None:
    board = dashboards()["voxline-calls"]
    duration = scraped.end - scraped.start
    macros = {"$__rate_interval": "10s", "$__range": f"{math.ceil(duration)}s"}
    answers: Answers = {}
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = fill(target["expr"], macros)
            legend = target.get("legendFormat", "")
            if target.get("instant"):
                result = scraped.query(expr)
                series = [(r["metric"], [(float(r["value"][0]), float(r["value"][1]))]) for r in result]
            else:
                result = scraped.query_range(expr, step=1)
                series = [(r["metric"], [(float(t), float(v)) for t, v in r["values"]]) for r in result]
            answers.setdefault(panel["title"], []).extend((_legend(legend, m), s) for m, s in series)
    out = Path(os.environ.get("VOXLINE_DASHBOARD_PNG", tmp_path / "dashboard.png"))
    assert draw(board, answers, out, scraped.start).stat().st_size > 10_000
    drawn = [p["title"] for p in board["panels"] if p["type"] != "row"]
    assert all(answers.get(title) for title in drawn), [t for t in drawn if not answers.get(t)]


def _legend(template: str, metric: dict[str, str]) -> str:
    if template in ("", "__auto"):
        return ",".join(f"{k}={v}" for k, v in metric.items()) or "value"
    for key, val in metric.items():
        template = template.replace("{{" + key + "}}", val)
    return template
