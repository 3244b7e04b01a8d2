"""Structured logs with call and turn ids, the one clock, Prometheus latency histograms.

Logs are JSON lines carrying `call_id`/`turn_id` from context variables, so one grep
follows a call across all five services. Secrets found in the environment are masked in
every log line, whatever code logged them, and so are provider keys of any account by their
shape and callers' phone numbers; callers' words are logged only as counts (`words()`)
unless VOXLINE_LOG_TRANSCRIPTS is on. Traces live in `voxline.tracing`.
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


# Credentials by their shape, for keys that never passed through this process's environment
# (another account's key in a provider's error body, a header echoed in a traceback, a key
# read from a file). 32-hex strings alone are left alone: they are call SIDs' tails and
# OpenTelemetry trace ids (span ids: 16 hex), which logs need; a 32-hex Twilio auth token is
# caught by its context (a URL's userinfo, an auth header, a `...token=` pair) instead.
# Compiled once; each shape has hints (lowercase) without which it cannot match, checked
# with `in` on the lowercased line first, so a line with no credential costs one lower()
# and a few substring scans instead of a regex scan per shape.
_TOKEN = r"[A-Za-z0-9._~+/=-]"
_KEY_SHAPES: tuple[tuple[tuple[str, ...], re.Pattern[str], str], ...] = (
    # Prefixed keys first, so the mask still says what kind of key it was.
    (("sk-",), re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), "sk-***"),  # OpenAI (sk-proj-, sk-svcacct-), Anthropic
    (("sk_",), re.compile(r"\bsk_[A-Za-z0-9_]{16,}"), "sk_***"),  # ElevenLabs: sk_ + 48 hex
    (("sk",), re.compile(r"\bSK[0-9a-fA-F]{32}\b"), "SK***"),  # Twilio API key SID (a CA call SID is not one)
    (("eyj",), re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "eyJ***"),  # JWT
    # A value named as a credential: `Authorization: Token x`, 'xi-api-key': 'x', api_key=x,
    # TWILIO_AUTH_TOKEN=x, ?AuthToken=x, "password": "x" (the scheme word is kept).
    (
        ("uthorization", "key", "token", "secret", "passw"),
        re.compile(
            r"(?i)((?:authorization|(?:api|access|secret|private)[_-]?key|token|secret|password|passwd)"
            r"[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|token|basic)\s+)?)[^\s\"'&,;)}\]]{8,}"
        ),
        r"\1***",
    ),
    # An HTTP authorization value on its own; a value that is all letters ("Token refreshed")
    # is prose, not a credential.
    (
        ("bearer", "token", "basic"),
        re.compile(rf"\b(Bearer|Token|Basic|bearer)\s+(?={_TOKEN}*[0-9+/=._-]){_TOKEN}{{8,}}"),
        r"\1 ***",
    ),
    # Basic auth in a URL: https://AC...:<auth token>@api.twilio.com, nats://user:pass@host.
    (("://",), re.compile(r"(://[^\s/:@\"'<>]+:)[^\s/@\"'<>]+@"), r"\1***@"),
)
# Deepgram: 40 lowercase hex, no prefix and so no hint (a git SHA-1 looks the same and is
# masked too).
_DEEPGRAM = re.compile(r"\b[0-9a-f]{40}\b")

# E.164 numbers (Twilio's From/To), also URL-encoded: country and area code and the last
# four digits stay, enough to tell calls apart, not to dial.
_PHONE = re.compile(r"(?<![\w+%])(\+|%2[Bb])([1-9]\d{7,14})(?!\d)")


def _mask_phone(m: re.Match[str]) -> str:
    digits = m.group(2)
    head, tail = (4, 4) if len(digits) >= 11 else (2, 2)
    return f"{m.group(1)}{digits[:head]}***{digits[-tail:]}"


class Redactor:
    """Masks secrets in whatever a log line carries: the message, the traceback of an
    exception (whose frames and message may quote a key) and the stack. Keys always (this
    process's own, and any provider's by shape); phone numbers unless `numbers` is False
    (VOXLINE_LOG_TRANSCRIPTS, for debugging one's own calls)."""

    def __init__(self, secrets: list[str] | None = None, numbers: bool = True) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted(_secret_values() if secrets is None else secrets, key=len, reverse=True)
        self.numbers = numbers

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        low = text.lower()
        for hints, pattern, replacement in _KEY_SHAPES:
            for hint in hints:
                if hint in low:
                    text = pattern.sub(replacement, text)
                    break
        text = _DEEPGRAM.sub("***", text)
        if self.numbers and ("+" in text or "%2" in text):
            text = _PHONE.sub(_mask_phone, text)
        return text


_log_words = False  # VOXLINE_LOG_TRANSCRIPTS, set by setup_logging


def words(text: str) -> str:
    """What a log line at INFO or above may show of caller or agent words: the words
    themselves only with VOXLINE_LOG_TRANSCRIPTS on; otherwise their count, so a line still
    tells an empty transcript from a long one. The call record keeps the words."""
    return repr(text) if _log_words else f"<{len(text.split())} words>"


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


def setup_logging(
    service: str, level: str = "INFO", fmt: str = "json", stream: IO[str] | None = None, transcripts: bool = False
) -> None:
    """`transcripts`: VOXLINE_LOG_TRANSCRIPTS (caller words and whole phone numbers in logs)."""
    global _log_words
    _log_words = transcripts
    handler = logging.StreamHandler(stream or sys.stderr)
    redact = Redactor(numbers=not transcripts)
    handler.setFormatter(_JsonFormatter(service, redact) if fmt == "json" else _TextFormatter(service, redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # twilio.http_client: eight INFO lines per REST request, query (From/To numbers) included.
    for noisy in ("uvicorn.access", "nats", "twilio.http_client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
