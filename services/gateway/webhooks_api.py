"""`GET /v1/calls/{id}/webhooks`: every webhook event of a call and each attempt to deliver
it (time, HTTP status or error, duration), so a developer sees why their receiver got
nothing without reading our logs. The orchestrator that owns the call writes the record
(voxline/webhooks/dispatcher.py); the bodies sent are left out (the call record has them)."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from fastapi import FastAPI, HTTPException
from fastapi.responses import Response

from proto.records import CALL_RECORDS_BUCKET, CallRecord
from proto.webhooks import WEBHOOK_DELIVERIES_BUCKET, WebhookDeliveries
from voxline.bus import Bus
from voxline.webhooks.dispatcher import deliveries_json

log = logging.getLogger("voxline.gateway.webhooks")

EXAMPLE: dict[str, Any] = {
    "call_id": "c0ffee00c0ffee00c0ffee00c0ffee00",
    "agent_id": "demo",
    "deliveries": [
        {
            "event_id": "evt_c0ffee00c0ffee00c0ffee00c0ffee00_started",
            "type": "call.started",
            "url": "https://example.com/voxline-events",
            "state": "delivered",
            "attempts": [
                {"attempt": 1, "at_us": 1764820800000000, "status_code": 500, "error": "HTTP 500", "duration_ms": 12.5},
                {"attempt": 2, "at_us": 1764820803100000, "status_code": 200, "error": "", "duration_ms": 9.8},
            ],
        }
    ],
}


def install(app: FastAPI, bus: Bus) -> None:
    @app.get(
        "/v1/calls/{call_id}/webhooks",
        tags=["calls"],
        summary="Webhook deliveries of a call",
        responses={
            200: {
                "description": "Each event (call.started, transcript.final, call.ended) with its state (pending, "
                "delivered, failed) and every attempt: status_code 0 means no HTTP answer (see error).",
                "content": {"application/json": {"example": EXAMPLE}},
            },
            404: {"description": "No such call."},
        },
    )
    async def call_webhooks(call_id: str) -> Response:
        if not (call_id.isascii() and call_id.isalnum()):
            raise HTTPException(400, "invalid call id")
        try:
            record = await bus.kv_get(WEBHOOK_DELIVERIES_BUCKET, call_id, WebhookDeliveries)
            if record is None:
                call = await bus.kv_get(CALL_RECORDS_BUCKET, call_id, CallRecord)
                if call is None:
                    raise HTTPException(404, f"no call {call_id}")
                record = WebhookDeliveries(call_id=call_id, agent_id=call.agent_id)
        except msgspec.ValidationError as exc:
            log.error("webhook deliveries of %s do not match the contract: %s", call_id, exc)
            raise HTTPException(500, f"webhook deliveries of call {call_id} are unreadable") from None
        return Response(deliveries_json(record), media_type="application/json")
