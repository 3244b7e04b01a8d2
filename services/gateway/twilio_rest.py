"""Twilio's REST API through the official SDK: transfers (new TwiML for a live call) and
outbound calls.

The SDK's aiohttp client keeps the gateway's event loop free while Twilio answers (a
blocking `requests` call would stall every media stream on this gateway). The API base
URL is configurable (`VOXLINE_TWILIO_API_BASE`) so tests and staging can point the SDK at
an emulator; errors become TwilioRestError with the status and Twilio's error code, and
never carry the auth token.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client
from twilio.twiml.voice_response import Dial, VoiceResponse

from voxline.config import GatewaySettings

log = logging.getLogger("voxline.gateway.twilio_rest")

T = TypeVar("T")

# https://www.twilio.com/docs/errors/21220 "Invalid call state": a call that is not
# in-progress (the caller hung up) cannot be redirected.
CALL_NOT_IN_PROGRESS = 21220
# https://www.twilio.com/docs/voice/api/call-resource#create-a-call-resource: without
# StatusCallbackEvent Twilio sends the status callback only for `completed`.
OUTBOUND_STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]


class TwilioRestError(RuntimeError):
    """Twilio refused or could not be reached; `status` is 0 when no answer came."""

    def __init__(self, status: int, code: int | None, message: str) -> None:
        self.status, self.code = status, code
        super().__init__(f"Twilio REST {status or 'unreachable'}{f' (code {code})' if code else ''}: {message}")


class CallNotInProgress(TwilioRestError):
    """The call ended before Twilio could be told what to do with it (error 21220)."""


class TwilioNotConfigured(RuntimeError):
    pass


@dataclass(frozen=True)
class PlacedCall:
    call_sid: str
    status: str


def dial_twiml(number: str, timeout_s: int = 0, caller_id: str = "", action: str = "") -> str:
    """`<Response><Dial>number</Dial></Response>`: Twilio leaves the media stream and rings
    the human; the caller stays on the line.

    https://www.twilio.com/docs/voice/twiml/dial: `timeout` is how long the human's phone
    rings (default 30 s); `callerId` is what their phone shows (default: the caller's own
    number, so without it the desk cannot tell a transfer from a direct call); `action`
    is requested with DialCallStatus when the dialled call ends, and its TwiML goes on with
    the caller. Without it a `<Dial>` nobody answered simply ends the call.
    """
    response = VoiceResponse()
    attributes: dict[str, object] = {}
    if timeout_s:
        attributes["timeout"] = timeout_s
    if caller_id:
        attributes["caller_id"] = caller_id
    if action:
        attributes["action"] = action
    response.append(Dial(number, **attributes))
    return str(response)


def business_number(direction: str, from_: str, to: str) -> str:
    """The call's own Twilio number: what the caller dialled (inbound), or what we called
    from (outbound-api, outbound-dial)."""
    return to if direction == "inbound" else from_


class TwilioRest:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._client: Client | None = None
        self._http: AsyncTwilioHttpClient | None = None

    @property
    def configured(self) -> bool:
        return bool(self.settings.twilio_account_sid and self.settings.twilio_auth_token)

    def client(self) -> Client:
        if not self.configured:
            raise TwilioNotConfigured("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are needed for the Twilio REST API")
        if self._client is None:
            # Created on first use, inside the running loop (aiohttp sessions bind to it).
            self._http = AsyncTwilioHttpClient(timeout=self.settings.twilio_timeout_s)
            client = Client(self.settings.twilio_account_sid, self.settings.twilio_auth_token, http_client=self._http)
            if self.settings.twilio_api_base:
                client.api.base_url = self.settings.twilio_api_base.rstrip("/")
            self._client = client
        return self._client

    async def _call(self, request: Callable[[], Awaitable[T]]) -> T:
        try:
            return await request()
        except TwilioRestException as exc:
            kind = CallNotInProgress if exc.code == CALL_NOT_IN_PROGRESS else TwilioRestError
            raise kind(exc.status, exc.code, exc.msg) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TwilioRestError(0, None, type(exc).__name__) from None

    async def caller_id(self, call_sid: str) -> str:
        """The call's Twilio number, asked of Twilio (any gateway can transfer any call)."""
        call = await self._call(lambda: self.client().calls(call_sid).fetch_async())
        return business_number(call.direction or "", call._from or "", call.to or "")  # `from` is `_from` in the SDK

    async def transfer(self, call_sid: str, number: str, action: str = "") -> None:
        """Replace the live call's TwiML with a `<Dial>` to `number`, shown the call's own
        Twilio number, ringing `transfer_timeout_s`; Twilio then requests `action` with the
        outcome. Raise CallNotInProgress when the caller already hung up."""
        try:
            caller_id = await self.caller_id(call_sid)
        except CallNotInProgress:
            raise
        except TwilioRestError as exc:
            log.warning("transfer without our caller ID (could not fetch the call: %s)", exc)
            caller_id = ""
        twiml = dial_twiml(number, self.settings.transfer_timeout_s, caller_id, action)
        await self._call(lambda: self.client().calls(call_sid).update_async(twiml=twiml))

    async def place_call(
        self, to: str, from_: str, url: str, status_callback: str = "", machine_detection: str = ""
    ) -> PlacedCall:
        """Ask Twilio to dial `to`; once answered it fetches `url` (our voice webhook). The
        status callback hears every progress event, so busy and no-answer are reported.
        `machine_detection` ("DetectMessageEnd", voicemail.py): Twilio fetches `url` only
        after deciding who answered, with `AnsweredBy`."""
        extra: dict[str, object] = {}
        if status_callback:
            extra = {"status_callback": status_callback, "status_callback_event": OUTBOUND_STATUS_EVENTS}
        if machine_detection:
            extra["machine_detection"] = machine_detection
        call = await self._call(lambda: self.client().calls.create_async(to=to, from_=from_, url=url, **extra))
        return PlacedCall(call_sid=call.sid or "", status=str(call.status or ""))

    async def close(self) -> None:
        if self._http is not None and self._http.session is not None:
            await self._http.session.close()
