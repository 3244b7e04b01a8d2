"""`POST /twilio/voice`: Twilio asks what to do with a call; we answer with a media stream.

The TwiML is built with the `twilio` library and signatures are checked with its
RequestValidator, so protocol details stay with the people who own the protocol.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

from fastapi import Request
from fastapi.responses import Response
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse

from services.gateway.stream_token import StreamTokens
from voxline.agents import AgentStore, UnknownAgent
from voxline.config import GatewaySettings

log = logging.getLogger("voxline.gateway.webhook")

MEDIA_PATH = "/twilio/media"


def public_base(request: Request, settings: GatewaySettings) -> str:
    """The base URL Twilio used: VOXLINE_PUBLIC_URL, else the request's own host and
    (forwarded) scheme, so a plain-HTTP local gateway hands out ws:// URLs."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    scheme = request.headers.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip()
    host = request.headers.get("x-forwarded-host", request.headers.get("host", request.url.netloc))
    return f"{scheme}://{host}"


def stream_url(base: str) -> str:
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + MEDIA_PATH, "", ""))


def twiml_response(xml: str, status_code: int = 200) -> Response:
    return Response(content=xml, media_type="application/xml", status_code=status_code)


def say_and_hang_up(text: str) -> str:
    response = VoiceResponse()
    response.say(text)
    response.hangup()
    return str(response)


async def voice_webhook(
    request: Request, settings: GatewaySettings, agents: AgentStore, tokens: StreamTokens
) -> Response:
    form = await request.form()
    params = {k: str(v) for k, v in form.items()}
    base = public_base(request, settings)
    if settings.twilio_auth_token:
        url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        signature = request.headers.get("x-twilio-signature", "")
        if not RequestValidator(settings.twilio_auth_token).validate(url, params, signature):
            log.warning("rejected a webhook with a bad X-Twilio-Signature (url %s)", url)
            return Response("invalid Twilio signature", status_code=403, media_type="text/plain")
    call_sid = params.get("CallSid", "")
    if not call_sid.isalnum():
        log.warning("webhook without a usable CallSid: %r", call_sid[:64])
        return Response("CallSid missing or invalid", status_code=400, media_type="text/plain")
    agent_id = request.query_params.get("agent") or params.get("agent") or "demo"
    try:
        agents.get(agent_id)
    except UnknownAgent as exc:
        log.error("webhook for an unknown agent: %s", exc, extra={"call_id": call_sid})
        return twiml_response(say_and_hang_up("Sorry, this number is not configured. Goodbye."))
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url(base))
    stream.parameter(name="agent_id", value=agent_id)
    stream.parameter(name="stream_token", value=tokens.issue(call_sid, agent_id))
    response.append(connect)
    log.info("answering call for agent %s", agent_id, extra={"call_id": call_sid})
    return twiml_response(str(response))
