"""Structured logs with call and turn ids, the one clock, Prometheus latency histograms.

Logs are JSON lines carrying `call_id`/`turn_id` from context variables, so one grep
follows a call across all five services. Secrets found in the environment are masked in
every log line, whatever code logged them. Traces live in `voxline.tracing`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
from typing import IO, Any

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


# Credentials by their shape, for keys that never passed through the environment (read from
# a file, pasted into a request): HTTP authorization values and OpenAI-style keys.
_CREDENTIAL_SHAPES = re.compile(r"\b(Bearer|Token|Basic)\s+[A-Za-z0-9._~+/=-]{8,}|\bsk-[A-Za-z0-9_-]{16,}")


class Redactor:
    """Masks secrets in whatever a log line carries: the message, the traceback of an
    exception (whose frames and message may quote a key) and the stack."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted(_secret_values() if secrets is None else secrets, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return _CREDENTIAL_SHAPES.sub(lambda m: f"{m.group(1)} ***" if m.group(1) else "sk-***", text)


class _JsonFormatter(logging.Formatter):
    def __init__(self, service: str, redact: Redactor) -> None:
        super().__init__()
        self.service = service
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": self.redact(record.getMessage()),
        }
        call_id = getattr(record, "call_id", None) or current_call_id.get()
        if call_id:
            entry["call_id"] = call_id
        turn_id = getattr(record, "turn_id", None) or current_turn_id.get()
        if turn_id:
            entry["turn_id"] = turn_id
        if record.exc_info:
            entry["error"] = self.redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = self.redact(self.formatStack(record.stack_info))
        return json.dumps(entry)


class _TextFormatter(logging.Formatter):
    def __init__(self, service: str, redact: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)-5s " + service + " %(ctx)s%(message)s", "%H:%M:%S")
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        call_id = getattr(record, "call_id", None) or current_call_id.get()
        turn_id = getattr(record, "turn_id", None) or current_turn_id.get()
        record.ctx = (f"[{call_id[:12]}" + (f"/t{turn_id}" if turn_id else "") + "] ") if call_id else ""
        return self.redact(super().format(record))  # message, traceback and stack alike


def setup_logging(service: str, level: str = "INFO", fmt: str = "json", stream: IO[str] | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    redact = Redactor()
    handler.setFormatter(_JsonFormatter(service, redact) if fmt == "json" else _TextFormatter(service, redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "nats"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
