"""OpenTelemetry traces: one trace per call, a span wherever a service does work for it.

The gateway's media stream span is the root of a call's trace; the orchestrator's call
span hangs under it and the call's turn spans under that. Each worker's span (an utterance
in the STT, a reply in the brain, a sentence in TTS) is a child of the call or turn whose
control message asked for the work: the context travels in that message's W3C
`traceparent` NATS header. The 20 ms audio frames carry none: there are 50 a second per
call, and their binary header already says whose they are.

Export is OTLP/HTTP, set up from the standard OpenTelemetry environment variables
(OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, OTEL_BSP_*...), and
happens only when an OTLP endpoint is set. Without one no SDK provider, exporter or export
thread exists: every span is the API's non-recording span, which hands on a traceparent
that came in unchanged and costs next to nothing.

Span attributes are ids only (`call_id`, `turn_id`, sequence numbers): never what the
caller said, never a credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from proto.headers import TRACEPARENT, call_headers

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("voxline.tracing")

SERVICE_PREFIX = "voxline-"

_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()
_propagator = TraceContextTextMapPropagator()

Attributes = Mapping[str, AttributeValue]


def export_configured(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces: an OTLP endpoint for them, and neither the
    SDK disabled (OTEL_SDK_DISABLED) nor the exporter set to "none" (OTEL_TRACES_EXPORTER)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def setup(service: str, instance_id: str = "") -> bool:
    """Export this process's spans as `voxline-<service>` (OTEL_SERVICE_NAME overrides) when
    an OTLP endpoint is configured; True if they are. Idempotent."""
    global _provider, _tracer
    if _provider is not None:
        return True
    if not export_configured():
        return False
    # Imported here: a process that exports nothing never loads the exporter's HTTP and
    # protobuf stack.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=_resource(service, instance_id))
    # The batch processor exports from a thread of its own, never on the event loop; its
    # delay and queue sizes come from OTEL_BSP_*, the endpoint and headers from OTEL_EXPORTER_OTLP_*.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _provider, _tracer = provider, provider.get_tracer("voxline")
    log.info("exporting traces over OTLP/HTTP as %s", _provider.resource.attributes.get("service.name"))
    return True


def _resource(service: str, instance_id: str) -> Resource:
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, OTELResourceDetector, Resource

    attributes: dict[str, AttributeValue] = {}
    from_env = OTELResourceDetector().detect().attributes
    if not os.environ.get("OTEL_SERVICE_NAME") and SERVICE_NAME not in from_env:
        attributes[SERVICE_NAME] = SERVICE_PREFIX + service
    if instance_id and SERVICE_INSTANCE_ID not in from_env:
        attributes[SERVICE_INSTANCE_ID] = instance_id
    return Resource.create(attributes)


def shutdown() -> None:
    """Export what is still queued, then stop: called as the process stops, so the spans of
    its last calls are not lost."""
    global _provider, _tracer
    if _provider is None:
        return
    provider, _provider, _tracer = _provider, None, trace.NoOpTracer()
    try:
        provider.shutdown()
    except Exception as exc:  # a collector gone at shutdown must not fail the stop
        log.warning("could not flush the last spans: %s", exc)


def exporting() -> bool:
    return _provider is not None


def _attributes(call_id: str, turn_id: int | None, extra: Attributes | None) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {"call_id": call_id} if call_id else {}
    if turn_id is not None:
        attributes["turn_id"] = turn_id
    if extra:
        attributes.update(extra)
    return attributes


def context_from(headers: Mapping[str, str] | None) -> Context:
    """The trace context a message's NATS headers carry (an empty one when none)."""
    if not headers or TRACEPARENT not in headers:
        return Context()
    return _propagator.extract(headers)


def start_span(
    name: str,
    *,
    headers: Mapping[str, str] | None = None,
    parent: Span | None = None,
    root: bool = False,
    call_id: str = "",
    turn_id: int | None = None,
    attributes: Attributes | None = None,
    start_ns: int | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Span:
    """A span that the caller ends (`span.end()`) when the work really ends.

    Its parent is `parent`, else the context in `headers` (a message's NATS headers), else
    none when `root` (a new trace), else the current context."""
    if parent is not None:
        context: Context | None = trace.set_span_in_context(parent)
    elif root:
        context = Context()
    elif headers is not None:
        context = context_from(headers)
    else:
        context = None
    return _tracer.start_span(
        name, context=context, kind=kind, attributes=_attributes(call_id, turn_id, attributes), start_time=start_ns
    )


@contextlib.contextmanager
def span(
    name: str,
    *,
    headers: Mapping[str, str] | None = None,
    parent: Span | None = None,
    call_id: str = "",
    turn_id: int | None = None,
    attributes: Attributes | None = None,
) -> Iterator[Span]:
    """A span around a block, current inside it (so `add_event` and nested spans find it),
    ended when the block ends; an exception marks it failed."""
    current = start_span(name, headers=headers, parent=parent, call_id=call_id, turn_id=turn_id, attributes=attributes)
    with trace.use_span(current, end_on_exit=True, record_exception=False, set_status_on_exception=False):
        try:
            yield current
        except BaseException as exc:
            end_failed(current, exc, end=False)
            raise


def end_failed(span: Span, exc: BaseException, end: bool = True) -> None:
    """Mark a span as cancelled (a barge-in, a call end) or failed, and end it unless asked not to."""
    if span.is_recording():
        if isinstance(exc, asyncio.CancelledError):
            span.set_attribute("cancelled", True)
        else:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    if end:
        span.end()


def mark_error(span: Span, reason: str) -> None:
    """Mark a span failed; `reason` names the kind of failure (never caller words or keys)."""
    span.set_status(Status(StatusCode.ERROR, reason))


@contextlib.contextmanager
def incoming(headers: Mapping[str, str] | None) -> Iterator[None]:
    """Make a message's trace context current for the block: the spans started inside
    (without a parent of their own) are children of the sender's span."""
    if not exporting() or not headers or TRACEPARENT not in headers:
        yield
        return
    token = otel_context.attach(context_from(headers))
    try:
        yield
    finally:
        otel_context.detach(token)


def traceparent(span: Span | None) -> str:
    """The W3C traceparent that makes a receiver's spans children of `span` ("" for none)."""
    if span is None or not span.get_span_context().is_valid:
        return ""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get(TRACEPARENT, "")


def headers_for(span: Span | None, call_id: str, turn_id: int | None = None) -> dict[str, str]:
    """NATS headers for a control message sent on behalf of `span`: the call and turn ids,
    and the span's context for the receiver's own spans."""
    return call_headers(call_id, turn_id, traceparent(span) or None)


def add_event(name: str, attributes: Attributes | None = None) -> None:
    """An event on the current span (e.g. the LLM's first token); nothing when none records."""
    current = trace.get_current_span()
    if current.is_recording():
        current.add_event(name, attributes=attributes)


def current_trace_id() -> str:
    """The trace id (32 hex digits) of the current span when it is sampled, for a metric
    exemplar that leads to the trace; "" otherwise (no exporter, no span, not sampled):
    an exemplar must never point at a trace that was not kept."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return ""
    return format(context.trace_id, "032x")
