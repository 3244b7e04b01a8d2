"""What every process's /metrics offers Prometheus: OpenMetrics (with exemplars) when asked
for it, and the NATS client's slow consumers, on a real nats-server."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.testclient import TestClient

from voxline.bus import Bus
from voxline.metrics import exemplar, trace_id
from voxline.service import probe_routes

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_the_trace_id_comes_from_the_calls_traceparent_when_no_span_is_current() -> None:
    assert trace_id(TRACEPARENT) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert exemplar(TRACEPARENT) == {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}
    assert exemplar("") is None and exemplar("00-" + "0" * 32 + "-00f067aa0ba902b7-01") is None


async def test_a_subscription_that_falls_behind_counts_as_a_slow_consumer(worker_bus: Bus) -> None:
    probe_routes(worker_bus, lambda: None)
    assert REGISTRY.get_sample_value("voxline_nats_slow_consumers") == 0
    release = asyncio.Event()

    async def stuck(_msg: object) -> None:
        await release.wait()

    sub = await worker_bus.nc.subscribe("test.slow", cb=stuck, pending_msgs_limit=1)
    for _ in range(5):
        await worker_bus.nc.publish("test.slow", b"x")
    await worker_bus.nc.flush()
    deadline = asyncio.get_running_loop().time() + 5
    while not worker_bus.slow_consumer_sids and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    release.set()
    await sub.unsubscribe()
    assert REGISTRY.get_sample_value("voxline_nats_slow_consumers") == 1


def test_metrics_speak_openmetrics_to_prometheus_and_the_classic_format_to_others() -> None:
    app = Starlette(routes=probe_routes(Bus("exposition-test"), lambda: None))
    client = TestClient(app)
    scraped = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert scraped.headers["content-type"].startswith("application/openmetrics-text")
    assert scraped.text.rstrip().endswith("# EOF")
    plain = client.get("/metrics")
    assert plain.headers["content-type"].startswith("text/plain") and "# EOF" not in plain.text
