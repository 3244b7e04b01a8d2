"""NATS header names. Every control message carries the call id, the turn id and W3C trace
context; audio frames carry none (their binary header says whose they are)."""

from __future__ import annotations

CALL_ID = "Voxline-Call-Id"
TURN_ID = "Voxline-Turn-Id"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


def call_headers(call_id: str, turn_id: int | None = None, traceparent: str | None = None) -> dict[str, str]:
    headers = {CALL_ID: call_id}
    if turn_id is not None:
        headers[TURN_ID] = str(turn_id)
    if traceparent:
        headers[TRACEPARENT] = traceparent
    return headers
