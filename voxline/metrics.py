"""What every process exposes to Prometheus besides its own stage metrics: the exposition
(OpenMetrics when the scraper asks for it, so exemplars reach Prometheus), the trace id
that exemplars carry, and the NATS client's slow consumers.

Metric names follow Prometheus' conventions (`voxline_` prefix, base units, `_total` on
counters) and never carry a call id: a label per call would grow without bound. A call is
found from a metric through its exemplar's trace id instead.
"""

from __future__ import annotations

import re

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.exposition import choose_encoder

from voxline import tracing

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-([0-9a-f]{2})$")
_NO_TRACE = "0" * 32

NATS_SLOW_CONSUMERS = Gauge(
    "voxline_nats_slow_consumers",
    "Subscriptions of this process that dropped messages because their handler fell behind (NATS slow consumer).",
)


WEBHOOK_DELIVERIES = Counter(
    "voxline_webhook_deliveries_total",
    "Webhook events to customers by outcome: delivered (2xx), rejected (a 4xx other than 408/429), gave_up "
    "(every attempt timed out, failed to connect or got 408/429/5xx), refused (the URL resolves to a "
    "non-public address: voxline/webhooks/destination.py), no_secret (the signing secret's "
    "variable is not set), dropped (the delivery queue was full).",
    ["outcome"],
)
WEBHOOK_ATTEMPTS = Counter(
    "voxline_webhook_attempts_total",
    "Webhook HTTP attempts by result: 2xx, 3xx, 4xx, 5xx, or error (timeout, connection error).",
    ["result"],
)

SSE_DROPPED = Counter(
    "voxline_call_events_dropped_total",
    "Live call events (GET /v1/calls/{id}/events) not queued for a client that reads too slowly: partial "
    "(transcript.partial, speech.*: dropped) or record (the stream was ended for the client to reconnect).",
    ["kind"],
)


def trace_id(traceparent: str = "") -> str:
    """The trace id of the current span, else the one in `traceparent` (the call span's,
    which the orchestrator keeps with the call); "" unless this process exports the trace
    and it is sampled: an exemplar must never point at a trace that was not kept."""
    current = tracing.current_trace_id()
    if current or not tracing.exporting():
        return current
    match = _TRACEPARENT.match(traceparent.strip().lower())
    if match and match.group(1) != _NO_TRACE and int(match.group(2), 16) & 1:
        return match.group(1)
    return ""


def exemplar(traceparent: str = "") -> dict[str, str] | None:
    """The exemplar of one observation: its trace id, so a slow bucket leads to the call."""
    found = trace_id(traceparent)
    return {"trace_id": found} if found else None


def exposition(accept: str) -> tuple[bytes, str]:
    """The metrics page in the format the scraper accepts: Prometheus asks for OpenMetrics,
    the only text format that carries exemplars; a plain `curl` gets the classic format."""
    encoder, content_type = choose_encoder(accept)
    return encoder(REGISTRY), content_type
