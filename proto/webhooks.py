"""Webhooks to the customer: the event types an agent's webhook receives, and the record of
their delivery attempts, kept in the JetStream KV bucket `WEBHOOK_DELIVERIES_BUCKET` under
the call id. The orchestrator that owns the call delivers and writes it; a new owner reads
it to go on with deliveries its predecessor had begun (and to skip those it finished); the
gateway's REST API serves it (`GET /v1/calls/{id}/webhooks`)."""

from __future__ import annotations

from typing import Literal

import msgspec

WEBHOOK_DELIVERIES_BUCKET = "voxline_webhook_deliveries"

EventType = Literal["call.started", "transcript.final", "call.ended"]
# pending: being delivered (or waiting for its next attempt); delivered: a 2xx; failed: a
# 4xx other than 408/429, every attempt used, or no signing secret.
DeliveryState = Literal["pending", "delivered", "failed"]


class WebhookAttempt(msgspec.Struct, kw_only=True):
    attempt: int  # 1, 2, ...
    at_us: int
    status_code: int = 0  # 0: no HTTP answer (timeout, connection error)
    error: str = ""
    duration_ms: float = 0.0


class WebhookDelivery(msgspec.Struct, kw_only=True):
    event_id: str
    type: EventType
    url: str
    state: DeliveryState = "pending"
    attempts: list[WebhookAttempt] = []
    # The exact body sent (JSON), so a new owner resends the same bytes; not served by the API.
    body: str = ""


class WebhookDeliveries(msgspec.Struct, kw_only=True):
    call_id: str
    agent_id: str
    deliveries: list[WebhookDelivery] = []
