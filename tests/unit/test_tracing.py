"""voxline.tracing: nothing at all without an OTLP endpoint; with one, spans linked through
NATS headers reach a real OTLP/HTTP receiver, named after the service."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from proto.headers import CALL_ID, TRACEPARENT, TURN_ID
from services.common import traced
from tests.emulators.otlp import OtlpReceiver
from voxline import tracing

OTEL_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER",
)
UPSTREAM = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    tracing.shutdown()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver().start()
    yield server
    server.stop()


def _instances(kind: type) -> int:
    found = 0
    for o in gc.get_objects():
        try:
            found += isinstance(o, kind)
        except ReferenceError:  # a weak proxy whose object is gone
            continue
    return found


def test_without_an_endpoint_nothing_is_set_up_and_no_id_is_made(clean_env: pytest.MonkeyPatch) -> None:
    exporters, processors, threads = (
        _instances(OTLPSpanExporter),
        _instances(BatchSpanProcessor),
        threading.active_count(),
    )
    assert not tracing.setup("brain")
    assert not tracing.exporting()
    assert _instances(OTLPSpanExporter) == exporters and _instances(BatchSpanProcessor) == processors
    assert threading.active_count() == threads  # no export thread either

    # A trace begun upstream is handed on unchanged; none is begun here.
    span = tracing.start_span("reply", headers={TRACEPARENT: UPSTREAM}, call_id="c1", turn_id=2)
    assert not span.is_recording()
    assert tracing.headers_for(span, "c1", 2) == {CALL_ID: "c1", TURN_ID: "2", TRACEPARENT: UPSTREAM}
    root = tracing.start_span("media stream", root=True, call_id="c1")
    assert not root.is_recording()
    assert tracing.headers_for(root, "c1") == {CALL_ID: "c1"}
    with tracing.span("clear", parent=root):
        assert tracing.current_trace_id() == ""


def test_an_empty_endpoint_or_a_disabled_sdk_sets_nothing_up(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    assert not tracing.setup("tts")
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    clean_env.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing.setup("tts")
    clean_env.delenv("OTEL_SDK_DISABLED")
    clean_env.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not tracing.setup("tts")
    assert not tracing.exporting()


async def test_spans_reach_the_receiver_linked_through_headers(
    clean_env: pytest.MonkeyPatch, receiver: OtlpReceiver
) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    assert tracing.setup("brain", instance_id="brain-1")

    turn = tracing.start_span("turn", root=True, call_id="c1", turn_id=3)
    headers = tracing.headers_for(turn, "c1", 3)
    with tracing.span("reply", headers=headers, call_id="c1", turn_id=3):
        tracing.add_event("first token")
        trace_id = tracing.current_trace_id()
    assert tracing.current_trace_id() == ""  # outside any span

    # A barge-in cancels the work: its span ends then, marked cancelled.
    stalled, started = tracing.start_span("sentence", headers=headers, call_id="c1", turn_id=3), asyncio.Event()

    async def stall() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(traced(stalled, stall()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    turn.end()
    tracing.shutdown()  # flushes: what was queued is exported before it returns
    assert not tracing.exporting()

    spans = {s.name: s for s in receiver.spans()}
    assert sorted(spans) == ["reply", "sentence", "turn"] and receiver.refused == 0
    assert {s.service for s in spans.values()} == {"voxline-brain"}
    assert trace_id == spans["turn"].trace_id and len(trace_id) == 32
    assert {s.trace_id for s in spans.values()} == {trace_id}
    assert spans["turn"].parent_span_id == ""
    assert spans["reply"].parent_span_id == spans["sentence"].parent_span_id == spans["turn"].span_id
    assert spans["reply"].attributes == {"call_id": "c1", "turn_id": 3}
    assert spans["reply"].events == ("first token",)
    assert spans["sentence"].attributes.get("cancelled") is True
    assert spans["turn"].start_ns <= spans["reply"].start_ns <= spans["reply"].end_ns <= spans["turn"].end_ns


async def test_otel_service_name_overrides_the_services_own(
    clean_env: pytest.MonkeyPatch, receiver: OtlpReceiver
) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    clean_env.setenv("OTEL_SERVICE_NAME", "voxline-brain-canary")
    assert tracing.setup("brain")
    tracing.start_span("reply", root=True).end()
    tracing.shutdown()
    assert [s.service for s in receiver.spans()] == ["voxline-brain-canary"]
