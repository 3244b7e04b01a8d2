"""What every process's /metrics offers Prometheus: OpenMetrics (with exemplars) when asked
for it, and the NATS client's slow consumers, on a real nats-server."""

from __future__ import annotations

import asyncio

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.testclient import TestClient

from voxline.bus import Bus
from voxline.metrics import exemplar, trace_id
from voxline.service import probe_routes

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def test_an_exemplar_names_only_a_trace_that_is_kept() -> None:
    # This process exports no traces: the call's traceparent names a trace nobody keeps.
    assert exemplar(TRACEPARENT) is None and exemplar("") is None
    sampled = SpanContext(int(TRACE_ID, 16), 0x00F067AA0BA902B7, is_remote=True, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(sampled)):
        assert trace_id() == TRACE_ID and exemplar() == {"trace_id": TRACE_ID}
    unsampled = SpanContext(int(TRACE_ID, 16), 0x00F067AA0BA902B7, is_remote=True, trace_flags=TraceFlags(0))
    with trace.use_span(NonRecordingSpan(unsampled)):
        assert exemplar() is None


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
    while not worker_bus.slow_consumer_sids and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 (nats-py reports it through a callback only)
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
