"""The REST API's outbound side: `POST /v1/calls` dials a number for an agent, and the
API keys (api_keys.py, and `VOXLINE_API_KEY`) that guard every `/v1/*` route: 401 with
`WWW-Authenticate: Bearer` for a missing, unknown or revoked key, 403 for a key without
the route's scope, 429 with `Retry-After` for a key over its rate limit.

An outbound call is Twilio dialling out, then fetching our own voice webhook once the
callee answers, so from there on it is the same media stream and conversation as an
inbound call. Errors are JSON `{"error": {"message", "type", ...}}` (api_errors.py): the
client's mistakes are 4xx, Twilio's refusals of our credentials or outages are 502 (not the client's fault).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from proto.records import ApiScope
from services.gateway.api_errors import ErrorResponse, error
from services.gateway.api_keys import (
    BOOTSTRAP_ID,
    ApiKeyStore,
    KeyStoreUnavailable,
    KeyView,
    RateLimiter,
    allows,
    required_scope,
    same_secret,
)
from services.gateway.call_outcomes import NEVER_ANSWERED, CallOutcomes
from services.gateway.twilio_rest import TwilioNotConfigured, TwilioRest, TwilioRestError
from services.gateway.voicemail import MACHINE_DETECTION, MAX_VOICE_URL_CHARS, MAX_VOICEMAIL_CHARS, VOICEMAIL_QUERY
from services.gateway.webhook import public_base, twilio_form
from voxline.agents import AgentStore, InvalidAgent, UnknownAgent
from voxline.agents.variables import (
    BUILTINS,
    MAX_VALUE_CHARS,
    MAX_VARIABLES,
    VARIABLES_QUERY,
    InvalidVariables,
    builtins,
    call_values,
    checked,
    encode_parameter,
    render,
)
from voxline.bus import Bus
from voxline.config import GatewaySettings, is_loopback

log = logging.getLogger("voxline.gateway.rest")

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
REFUSAL_LOG_INTERVAL_S = 10.0
MAX_TOKEN = 1024  # a bearer token longer than this is refused unread (keys are 60 characters)


class OutboundCall(BaseModel):
    to: str = Field(description="Number to dial, E.164 (+15551234567).")
    agent_id: str = Field("demo", description="Agent that talks when the callee answers.")
    from_: str = Field("", alias="from", description="Caller ID (a Twilio number); TWILIO_FROM_NUMBER when empty.")
    machine_detection: bool = Field(
        False,
        strict=True,
        description="Answering-machine detection (Twilio's MachineDetection=DetectMessageEnd): the agent talks "
        "only when a human (or Twilio cannot tell: `unknown`) answers; a machine gets `voicemail_message` "
        "after its beep and a hang-up, a fax a hang-up. Detection takes a few seconds after the answer. "
        "The record's `answered_by` and `end_reason` (`voicemail` or `machine`) say what happened.",
    )
    voicemail_message: str = Field(
        "",
        max_length=MAX_VOICEMAIL_CHARS,
        description="What to leave on an answering machine, read by Twilio's text-to-speech voice (not the "
        "agent's). Needs `machine_detection: true`. Empty: hang up on a machine without a message. "
        "Its `{{name}}` placeholders take the call's variables.",
    )
    variables: dict[str, Any] = Field(
        default_factory=dict,
        description="Values for the agent's `{{name}}` placeholders (system prompt, greeting, goodbye and its "
        "other messages, voicemail_message) on this call: name -> string, number or boolean. A placeholder "
        "with no value takes the agent's `default_variables`, else is empty. At most "
        f"{MAX_VARIABLES}; names are letters, digits and _ (not starting with a digit, at most 64); values at "
        f"most {MAX_VALUE_CHARS} characters; all of them, with voicemail_message, must fit in the voice URL "
        f"({MAX_VOICE_URL_CHARS} characters once encoded). Built-ins, set by the call: "
        + ", ".join(f"`{b}`" for b in BUILTINS)
        + ". Kept in the call record, never logged.",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "to": "+15551234567",
                    "agent_id": "demo",
                    "machine_detection": True,
                    "voicemail_message": "Hi {{customer_name}}, this is Voxline about your appointment. "
                    "Please call us back.",
                    "variables": {"customer_name": "Ada", "appointment": "Tuesday 3pm"},
                }
            ]
        }
    )

    @field_validator("voicemail_message")
    @classmethod
    def _needs_detection(cls, value: str, info: ValidationInfo) -> str:
        if value.strip() and not info.data.get("machine_detection", False):
            raise ValueError("a voicemail message needs machine_detection: true (else no machine is detected)")
        return value


class PlacedCall(BaseModel):
    call_sid: str = Field(description="Twilio's CallSid: the call's id in GET /v1/calls/{call_id}.")
    status: str = Field(description="Twilio's status of the call so far (queued, initiated, ringing…).")


PLACE_CALL_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": why}
    for status, why in (
        (400, "`to` or `from` is not an E.164 number, or Twilio refused the call."),
        (401, "Missing, unknown or revoked API key."),
        (403, "The key lacks the `calls` scope, or the agent may not call `to` (its outbound_allowlist)."),
        (404, "No such agent."),
        (
            422,
            "The body is not JSON with Content-Type: application/json, or a field is missing or invalid "
            "(`machine_detection` not a boolean, `voicemail_message` too long or without machine_detection, "
            "a variable's name or value: `variables.<name>`); `field` names it.",
        ),
        (502, "Twilio could not place the call."),
        (503, "Twilio is not configured on this gateway."),
    )
}


def bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and 0 < len(token) <= MAX_TOKEN else ""


def refused(status: int, message: str, challenge: str) -> JSONResponse:
    response = error(status, message)
    response.headers["WWW-Authenticate"] = challenge
    return response


class ApiAuth:
    """Who may call /v1/*: the keys of `voxline keys` (api_keys.py), and VOXLINE_API_KEY as
    the bootstrap admin key. With neither (no env key, an empty store) the API is open
    only when the gateway listens on loopback, so `make run` needs no setup; bound beyond
    it, every request needs a key, and the first one comes from `voxline keys create`.
    VOXLINE_INSECURE_DEV lets such a gateway start without a key but never opens /v1:
    an open API places calls on the owner's account, and a key is one command away."""

    def __init__(self, settings: GatewaySettings, bus: Bus) -> None:
        self.bootstrap = settings.api_key
        self.loopback = is_loopback(settings.http_host)
        self.keys = KeyView(ApiKeyStore(bus))
        self.limiter = RateLimiter(settings.api_rate_limit_per_min)
        self._logged: dict[str, float] = {}  # what was refused -> when last logged

    def _log_refusal(self, what: str, message: str, *args: object) -> None:
        """At most one line per kind of refusal every REFUSAL_LOG_INTERVAL_S: a scanner or
        a client over its limit must not flood the logs."""
        now = time.monotonic()
        if now - self._logged.get(what, float("-inf")) >= REFUSAL_LOG_INTERVAL_S:
            if len(self._logged) > 10_000:
                self._logged.clear()
            self._logged[what] = now
            log.warning(message, *args)

    async def open(self) -> bool:
        return self.loopback and not self.bootstrap and await self.keys.empty()

    async def principal(self, token: str) -> tuple[str, list[ApiScope]] | None:
        if not token:
            return None
        if self.bootstrap and same_secret(token, self.bootstrap):
            return BOOTSTRAP_ID, ["admin"]
        record = await self.keys.authenticate(token)
        return (record.id, record.scopes) if record is not None else None

    async def check(self, request: Request) -> Response | None:
        """None when the request may go on; else the refusal."""
        method, path = request.method, request.scope["path"]
        token = bearer(request.headers.get("authorization", ""))
        try:
            if not token and await self.open():
                return None
            who = await self.principal(token)
        except KeyStoreUnavailable as exc:
            log.error("refused %s %s: %s", method, path, exc)
            return error(503, "API keys cannot be checked right now", headers={"Retry-After": "1"})
        if who is None:
            self._log_refusal("401", "refused %s %s: %s API key", method, path, "invalid" if token else "no")
            challenge = 'Bearer realm="voxline", error="invalid_token"' if token else 'Bearer realm="voxline"'
            return refused(401, "missing, unknown or revoked API key (Authorization: Bearer <key>)", challenge)
        principal, scopes = who
        wait_s = self.limiter.wait_s(principal)
        if wait_s > 0:
            self._log_refusal(
                f"429 {principal}", "refused %s %s: API key %s over its rate limit", method, path, principal
            )
            response = error(429, "API key rate limit exceeded", retry_after_s=math.ceil(wait_s))
            response.headers["Retry-After"] = str(math.ceil(wait_s))
            return response
        needed = required_scope(method, path)
        if not allows(scopes, needed):
            self._log_refusal(
                f"403 {principal}", "refused %s %s: API key %s lacks scope %s", method, path, principal, needed
            )
            challenge = f'Bearer realm="voxline", error="insufficient_scope", scope="{needed}"'
            return refused(403, f"this API key lacks the '{needed}' scope", challenge)
        return None


def require_api_key(app: FastAPI, settings: GatewaySettings, bus: Bus) -> ApiAuth:
    """Every /v1 request passes ApiAuth first; nothing else (the Twilio routes check
    Twilio's signature, the probes are for load balancers)."""
    auth = ApiAuth(settings, bus)
    if auth.loopback and not auth.bootstrap:
        log.info("no VOXLINE_API_KEY: /v1 is open on loopback until a key is made with 'voxline keys create'")
    elif not auth.bootstrap:
        log.info("/v1 needs an API key ('voxline keys create'): the gateway listens beyond loopback")

    @app.middleware("http")
    async def check_key(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.scope["path"]
        if path == "/v1" or path.startswith("/v1/"):
            refusal = await auth.check(request)
            if refusal is not None:
                return refusal
        return await call_next(request)

    return auth


async def place_call(
    body: OutboundCall, request: Request, settings: GatewaySettings, agents: AgentStore, twilio: TwilioRest
) -> JSONResponse:
    if not E164.match(body.to):
        return error(400, f"'to' must be an E.164 number like +15551234567, not {body.to[:32]!r}")
    from_ = body.from_ or settings.twilio_from_number
    if not E164.match(from_):
        return error(400, "'from' (or TWILIO_FROM_NUMBER) must be an E.164 Twilio number")
    try:
        agent = agents.get(body.agent_id)
    except (UnknownAgent, InvalidAgent) as exc:
        return error(404, str(exc))
    if not agent.may_call(body.to):  # toll fraud: a leaked key must not dial premium numbers
        log.warning("outbound call for agent %s refused: the number is not in its outbound_allowlist", agent.id)
        hint = "add the number (or a prefix like +1415555*) to the agent's outbound_allowlist"
        return error(403, f"agent {agent.id!r} may not call {body.to}: {hint}")
    try:
        variables = checked(body.variables)
    except InvalidVariables as exc:
        return error(422, str(exc), field=exc.field)
    base = public_base(request, settings)
    if not settings.public_url:
        log.warning("VOXLINE_PUBLIC_URL is not set: Twilio will be sent to %s, which it may not reach", base)
    query = urlencode({"agent": body.agent_id})
    voice_url = f"{base}/twilio/voice?{query}"
    if variables:  # in the signed voice URL, like the voicemail message (variables.py)
        voice_url += "&" + urlencode({VARIABLES_QUERY: encode_parameter(variables)}, quote_via=quote)
        if len(voice_url) > MAX_VOICE_URL_CHARS:
            why = f"too long once URL-encoded ({len(voice_url)} of at most {MAX_VOICE_URL_CHARS} characters)"
            return error(422, f"variables: {why}", field="variables")
    if body.machine_detection and body.voicemail_message.strip():
        # In the signed voice URL (voicemail.py says why), bounded so Twilio can request it.
        # Percent-encoded with only unreserved characters left bare (no `+` for a space):
        # the one form no HTTP stack between Twilio and us normalises into another, which
        # would break the signature, as Twilio signs the URL exactly as we gave it.
        values = call_values(agent.default_variables, variables, builtins("", "outbound", from_, body.to))
        message = render(body.voicemail_message, values).strip()
        voice_url += "&" + urlencode({VOICEMAIL_QUERY: message}, quote_via=quote)
        if len(voice_url) > MAX_VOICE_URL_CHARS:
            why = f"too long once URL-encoded ({len(voice_url)} of at most {MAX_VOICE_URL_CHARS} characters)"
            return error(422, f"voicemail_message: {why}", field="voicemail_message")
    try:
        placed = await twilio.place_call(
            body.to,
            from_,
            voice_url,
            status_callback=f"{base}/twilio/status?{query}",
            machine_detection=MACHINE_DETECTION if body.machine_detection else "",
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
    if status in NEVER_ANSWERED and (call_sid.isascii() and call_sid.isalnum()):
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
    require_api_key(app, settings, outcomes.bus)  # the store is on the bus the gateway already holds

    @app.post("/v1/calls", status_code=201, response_model=PlacedCall, responses=PLACE_CALL_ERRORS, tags=["calls"])
    async def create_call(body: OutboundCall, request: Request) -> JSONResponse:
        """Dial `to` for an agent; the agent talks once the callee answers. The body is JSON
        (`Content-Type: application/json`); GET /v1/calls/{call_sid} follows the call."""
        return await place_call(body, request, settings, agents, twilio)

    @app.post("/twilio/status")
    async def twilio_status(request: Request) -> Response:
        return await call_status(request, settings, outcomes)
