"""The HTTP side of a call: Twilio's voice webhook going in, the call record coming out."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from twilio.request_validator import RequestValidator

from voxline.agents.variables import VARIABLES_QUERY, encode_parameter
from voxline.simulator.script import CallScript
from voxline.simulator.twilio_stream import ProtocolError, StreamTarget, parse_twiml

STREAM_TOKEN = "stream_token"


class PlacementError(RuntimeError):
    """The gateway did not hand out a media stream for the call."""


def webhook_params(script: CallScript) -> dict[str, str]:
    """The form fields Twilio posts for an inbound call that has been answered."""
    return {
        "CallSid": script.call_sid or "",
        "AccountSid": script.account_sid or "",
        "From": script.from_number,
        "To": script.to_number,
        "Caller": script.from_number,
        "Called": script.to_number,
        "CallStatus": "in-progress",
        "Direction": script.direction,
        "ApiVersion": "2010-04-01",
    }


async def place_call(
    http: httpx.AsyncClient, base_url: str, script: CallScript, auth_token: str | None
) -> StreamTarget:
    url = f"{base_url.rstrip('/')}/twilio/voice?{urlencode({'agent': script.agent_id})}"
    if script.variables:  # as POST /v1/calls puts them in the voice URL
        url += "&" + urlencode({VARIABLES_QUERY: encode_parameter(script.variables)}, quote_via=quote)
    try:
        response = await post_as_twilio(http, url, script, auth_token)
    except httpx.HTTPError as exc:
        raise PlacementError(f"POST {url} failed: {exc!r}") from exc
    if response.status_code != 200:
        raise PlacementError(f"POST /twilio/voice answered HTTP {response.status_code}: {response.text[:200]}")
    try:
        return parse_twiml(response.text, base_url)
    except ProtocolError as exc:
        raise PlacementError(f"bad TwiML from /twilio/voice: {exc}") from exc


async def post_as_twilio(
    http: httpx.AsyncClient, url: str, script: CallScript, auth_token: str | None
) -> httpx.Response:
    """A voice webhook request as Twilio makes it: the call's fields, signed (when a token is
    given) over the full URL, query included, plus the sorted POST fields."""
    params = webhook_params(script)
    headers: dict[str, str] = {}
    if auth_token:
        headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(url, params)
    return await http.post(url, data=params, headers=headers)


def upgrade_headers(url: str, auth_token: str | None) -> dict[str, str]:
    """The media WebSocket's upgrade request as Twilio signs it (ASSUMPTION, as in the
    gateway's `upgrade_signed`): the `<Stream url>` with no parameters."""
    if not auth_token:
        return {}
    return {"X-Twilio-Signature": RequestValidator(auth_token).compute_signature(url, {})}


def stream_parameters(twiml_parameters: dict[str, str], script: CallScript) -> dict[str, str]:
    """What Twilio would put in start.customParameters, plus the script's tampering."""
    params = dict(twiml_parameters)
    if script.drop_stream_token:
        params.pop(STREAM_TOKEN, None)
    elif script.stream_token_override is not None:
        params[STREAM_TOKEN] = script.stream_token_override
    params.update(script.extra_parameters)
    return params


async def fetch_record(
    http: httpx.AsyncClient, base_url: str, call_sid: str, timeout_s: float, notes: list[str]
) -> dict[str, Any] | None:
    """Poll the call record until it says "ended"; the transcript settles after hang-up."""
    url = f"{base_url.rstrip('/')}/v1/calls/{call_sid}"
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] | None = None
    while True:
        try:
            response = await http.get(url)
        except httpx.HTTPError as exc:
            notes.append(f"GET {url} failed: {exc!r}")
            return None
        if response.status_code == 200:
            try:
                body = response.json()
            except ValueError:
                notes.append(f"GET {url}: not JSON")
                return None
            last = body if isinstance(body, dict) else {"body": body}
            if last.get("status") == "ended":
                return last
        elif response.status_code != 404:
            notes.append(f"GET {url} answered HTTP {response.status_code}")
            return None
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.25)
    if last is None:
        waited = f" for {timeout_s:.0f}s" if timeout_s > 0 else ""
        notes.append(f"no call record: GET {url} answered 404{waited}")
    else:
        notes.append(f"call record still {last.get('status')!r} after {timeout_s:.0f}s")
    return last
