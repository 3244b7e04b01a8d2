"""A stack like the integration tests' (fake providers, real processes, real nats-server)
that also exports its traces, to a small OTLP/HTTP sink here, so the exemplars Prometheus
scrapes name traces that were kept."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.integration.conftest import AUTH_TOKEN
from voxline.agents import BUNDLED_DIR
from voxline.devstack import DevStack, free_port


class TraceSink:
    """Answers OTLP/HTTP trace exports (protobuf) and keeps the trace ids they carry."""

    def __init__(self) -> None:
        self.trace_ids: set[str] = set()
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = ExportTraceServiceRequest.FromString(body)
                with sink._lock:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            sink.trace_ids.update(span.trace_id.hex() for span in scope.spans)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def received(self) -> set[str]:
        with self._lock:
            return set(self.trace_ids)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def traces() -> Iterator[TraceSink]:
    sink = TraceSink()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, traces: TraceSink) -> Iterator[DevStack]:
    agents = tmp_path_factory.mktemp("agents")
    shutil.copy(BUNDLED_DIR / "demo.toml", agents / "demo.toml")
    env = {
        "VOXLINE_AGENTS_DIR": str(agents),
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "VOXLINE_FAKE_TTFT_MS": "80",
        "VOXLINE_FAKE_TTFB_MS": "40",
        "VOXLINE_FAKE_STT_LATENCY_MS": "20",
        "OTEL_EXPORTER_OTLP_ENDPOINT": traces.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: spans reach the sink soon after they end
    }
    s = DevStack(
        profile="fake",
        http_port=free_port(),
        data_dir=tmp_path_factory.mktemp("nats"),
        log_dir=tmp_path_factory.mktemp("logs"),
        extra_env=env,
        verbose=False,
    )
    try:
        s.start(timeout=90)
        yield s
    finally:
        s.stop()
