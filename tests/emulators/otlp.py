"""An OTLP/HTTP trace receiver, what a collector (the OpenTelemetry Collector, Tempo,
Jaeger) is to the services: a small aiohttp server that decodes every export with the
official protobufs (`opentelemetry-proto`) and keeps its spans for the tests to read.

The protocol, from the OTLP specification (https://opentelemetry.io/docs/specs/otlp/#otlphttp):
- `POST /v1/traces` (the default path for traces), body a binary-encoded
  `ExportTraceServiceRequest`, `Content-Type: application/x-protobuf`
  (https://opentelemetry.io/docs/specs/otlp/#otlphttp-request);
- the client may gzip the body and then sends `Content-Encoding: gzip`; servers must
  support `none` and `gzip` (https://opentelemetry.io/docs/specs/otlp/#protocol-details);
- full success is `200 OK` with an `ExportTraceServiceResponse` in the request's encoding
  (https://opentelemetry.io/docs/specs/otlp/#full-success); a request that cannot be
  decoded is `400 Bad Request` (https://opentelemetry.io/docs/specs/otlp/#bad-data).
ASSUMPTION: only the binary protobuf encoding is served (the Python exporter sends only
that); a JSON request is answered 415 Unsupported Media Type.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
from dataclasses import dataclass, field

from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

PROTOBUF = "application/x-protobuf"
AttributeValue = str | bool | int | float


@dataclass(frozen=True)
class ReceivedSpan:
    service: str  # the resource's service.name
    name: str
    trace_id: str  # hex, as in a traceparent
    span_id: str
    parent_span_id: str  # "" for a root span
    start_ns: int
    end_ns: int
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    events: tuple[str, ...] = ()
    error: bool = False


def _value(value: AnyValue) -> AttributeValue:
    kind = value.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        found: AttributeValue = getattr(value, kind)
        return found
    return str(value)  # arrays, maps, bytes: no span of ours sends them


def _attributes(pairs: list[KeyValue]) -> dict[str, AttributeValue]:
    return {pair.key: _value(pair.value) for pair in pairs}


class OtlpReceiver:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="otlp-receiver", daemon=True)
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self.requests = 0
        self.refused = 0  # requests answered with an error status
        self.port = 0

    @property
    def endpoint(self) -> str:
        """What OTEL_EXPORTER_OTLP_ENDPOINT is set to: the exporter adds `/v1/traces`."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    async def _export(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.content_type != PROTOBUF:
            self.refused += 1
            return web.Response(status=415, text=f"only {PROTOBUF} is served")
        body = await request.read()
        try:
            if request.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            export = ExportTraceServiceRequest.FromString(body)
        except (OSError, EOFError, DecodeError) as exc:
            self.refused += 1
            return web.Response(status=400, text=f"undecodable export: {exc}")
        received = [
            ReceivedSpan(
                service=str(_attributes(list(resource_spans.resource.attributes)).get("service.name", "")),
                name=span.name,
                trace_id=span.trace_id.hex(),
                span_id=span.span_id.hex(),
                parent_span_id=span.parent_span_id.hex(),
                start_ns=span.start_time_unix_nano,
                end_ns=span.end_time_unix_nano,
                attributes=_attributes(list(span.attributes)),
                events=tuple(event.name for event in span.events),
                error=span.status.code == span.status.STATUS_CODE_ERROR,
            )
            for resource_spans in export.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self._lock:
            self._spans.extend(received)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type=PROTOBUF)
