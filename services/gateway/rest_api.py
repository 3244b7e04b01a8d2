"""The REST API's outbound side: `POST /v1/calls` dials a number for an agent, and the
bearer API key (`VOXLINE_API_KEY`) that guards every `/v1/*` route.

An outbound call is Twilio dialling out, then fetching our own voice webhook once the
callee answers, so from there on it is the same media stream and conversation as an
inbound call. Errors are JSON `{"error": {"message", ...}}`: the client's mistakes are
4xx, Twilio's refusals of our credentials or outages are 502 (not the client's fault).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.gateway.call_outcomes import NEVER_ANSWERED, CallOutcomes
from services.gateway.twilio_rest import TwilioNotConfigured, TwilioRest, TwilioRestError
from services.gateway.webhook import public_base, twilio_form
from voxline.agents import AgentStore, InvalidAgent, UnknownAgent
from voxline.config import GatewaySettings

log = logging.getLogger("voxline.gateway.rest")

E164 = re.compile(r"^\+[1-9]\d{6,14}$")


class OutboundCall(BaseModel):
    to: str = Field(description="Number to dial, E.164 (+15551234567).")
    agent_id: str = Field("demo", description="Agent that talks when the callee answers.")
    from_: str = Field("", alias="from", description="Caller ID (a Twilio number); TWILIO_FROM_NUMBER when empty.")


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"message": message, **extra}}, status_code=status)


def require_api_key(app: FastAPI, api_key: str) -> None:
    """Every /v1/* request must carry `Authorization: Bearer <VOXLINE_API_KEY>` when it is set."""
    if not api_key:
        log.warning("VOXLINE_API_KEY is not set: the REST API (/v1/*) is open to anyone who can reach it")
        return
    expected = f"Bearer {api_key}".encode()

    @app.middleware("http")
    async def check_key(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "").encode()
            if not secrets.compare_digest(given, expected):
                log.warning("refused %s %s: missing or wrong API key", request.method, request.url.path)
                response = error(401, "missing or invalid API key (Authorization: Bearer <VOXLINE_API_KEY>)")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        return await call_next(request)


async def place_call(
    body: OutboundCall, request: Request, settings: GatewaySettings, agents: AgentStore, twilio: TwilioRest
) -> JSONResponse:
    if not E164.match(body.to):
        return error(400, f"'to' must be an E.164 number like +15551234567, not {body.to[:32]!r}")
    from_ = body.from_ or settings.twilio_from_number
    if not E164.match(from_):
        return error(400, "'from' (or TWILIO_FROM_NUMBER) must be an E.164 Twilio number")
    try:
        agents.get(body.agent_id)
    except (UnknownAgent, InvalidAgent) as exc:
        return error(404, str(exc))
    base = public_base(request, settings)
    if not settings.public_url:
        log.warning("VOXLINE_PUBLIC_URL is not set: Twilio will be sent to %s, which it may not reach", base)
    query = urlencode({"agent": body.agent_id})
    try:
        placed = await twilio.place_call(
            body.to, from_, f"{base}/twilio/voice?{query}", status_callback=f"{base}/twilio/status?{query}"
        )
    except TwilioNotConfigured as exc:
        return error(503, str(exc))
    except TwilioRestError as exc:
        log.error("outbound call to agent %s failed: %s", body.agent_id, exc)
        if exc.status in (400, 404):
            return error(400, f"Twilio refused the call: {exc}", twilio_code=exc.code)
        return error(502, f"Twilio could not place the call: {exc}", twilio_code=exc.code)
    log.info("outbound call %s placed for agent %s (%s)", placed.call_sid, body.agent_id, placed.status)
    return JSONResponse({"call_sid": placed.call_sid, "status": placed.status}, status_code=201)


async def call_status(request: Request, settings: GatewaySettings, outcomes: CallOutcomes) -> Response:
    """Twilio's status callback of an outbound call, for every event we asked for
    (initiated, ringing, answered, completed): https://www.twilio.com/docs/voice/api/call-resource#statuscallback.
    A call that ended busy, unanswered or failed never reaches the agent, so its record is
    written here; the others are logged (an answered call's record is the orchestrator's)."""
    form = await twilio_form(request, settings)
    if isinstance(form, Response):
        return form
    call_sid, status = form.get("CallSid", ""), form.get("CallStatus", "?")
    extra = {"call_id": call_sid}
    if status in NEVER_ANSWERED and call_sid.isalnum():
        agent_id = request.query_params.get("agent", "")
        try:
            if await outcomes.never_answered(call_sid, status, agent_id, form.get("From", ""), form.get("To", "")):
                log.warning("outbound call for agent %s ended unanswered: %s", agent_id, status, extra=extra)
        except Exception as exc:
            log.error("outbound call ended %s; could not write its record: %s", status, exc, extra=extra)
    else:
        log.info("call status %s", status, extra=extra)
    return Response(status_code=204)


def install(
    app: FastAPI, settings: GatewaySettings, agents: AgentStore, twilio: TwilioRest, outcomes: CallOutcomes
) -> None:
    require_api_key(app, settings.api_key)

    @app.post("/v1/calls", status_code=201)
    async def create_call(body: OutboundCall, request: Request) -> JSONResponse:
        return await place_call(body, request, settings, agents, twilio)

    @app.post("/twilio/status")
    async def twilio_status(request: Request) -> Response:
        return await call_status(request, settings, outcomes)
