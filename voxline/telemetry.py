"""Structured logs with call and turn ids, Prometheus metrics, W3C trace context.

Logs are JSON lines carrying `call_id`/`turn_id` from context variables, so one grep
follows a call across all five services. Secrets found in the environment are masked in
every log line, whatever code logged them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import Histogram

current_call_id: contextvars.ContextVar[str] = contextvars.ContextVar("call_id", default="")
current_turn_id: contextvars.ContextVar[int] = contextvars.ContextVar("turn_id", default=0)

_SECRET_SUFFIXES = ("_KEY", "_TOKEN", "_SECRET", "_PASSWORD")

# Latency buckets in seconds, dense where turn-taking lives (10 ms .. 2 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)


def now_us() -> int:
    """Wall-clock microseconds: the one clock every service stamps events with."""
    return time.time_ns() // 1000


def stage_histogram(name: str, doc: str, labels: tuple[str, ...] = ()) -> Histogram:
    return Histogram(name, doc, labelnames=labels, buckets=LATENCY_BUCKETS)


def _secret_values() -> list[str]:
    return [v for k, v in os.environ.items() if k.upper().endswith(_SECRET_SUFFIXES) and len(v) >= 6]


class _Redactor(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.secrets = _secret_values()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


class _JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        call_id = getattr(record, "call_id", None) or current_call_id.get()
        if call_id:
            entry["call_id"] = call_id
        turn_id = getattr(record, "turn_id", None) or current_turn_id.get()
        if turn_id:
            entry["turn_id"] = turn_id
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__("%(asctime)s %(levelname)-5s " + service + " %(ctx)s%(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        call_id = getattr(record, "call_id", None) or current_call_id.get()
        turn_id = getattr(record, "turn_id", None) or current_turn_id.get()
        record.ctx = (f"[{call_id[:12]}" + (f"/t{turn_id}" if turn_id else "") + "] ") if call_id else ""
        return super().format(record)


def setup_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(service) if fmt == "json" else _TextFormatter(service))
    handler.addFilter(_Redactor())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "nats"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


_tracer_provider = TracerProvider()
_tracer = _tracer_provider.get_tracer("voxline")
_propagator = TraceContextTextMapPropagator()


def new_traceparent(parent: str | None = None, name: str = "voxline") -> str:
    """A W3C traceparent for a new span, child of `parent` when given.

    Spans are created for their ids only; exporting is left to the OpenTelemetry
    environment variables of the deployment."""
    context = _propagator.extract({"traceparent": parent}) if parent else None
    span = _tracer.start_span(name, context=context)
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    span.end()
    return carrier.get("traceparent", "")
