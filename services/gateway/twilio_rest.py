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
from dataclasses import dataclass

import aiohttp
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client
from twilio.twiml.voice_response import Dial, VoiceResponse

from voxline.config import GatewaySettings

log = logging.getLogger("voxline.gateway.twilio_rest")


class TwilioRestError(RuntimeError):
    """Twilio refused or could not be reached; `status` is 0 when no answer came."""

    def __init__(self, status: int, code: int | None, message: str) -> None:
        self.status, self.code = status, code
        super().__init__(f"Twilio REST {status or 'unreachable'}{f' (code {code})' if code else ''}: {message}")


class TwilioNotConfigured(RuntimeError):
    pass


@dataclass(frozen=True)
class PlacedCall:
    call_sid: str
    status: str


def dial_twiml(number: str) -> str:
    """`<Response><Dial>number</Dial></Response>`: Twilio leaves the media stream and rings
    the human; the caller stays on the line."""
    response = VoiceResponse()
    response.append(Dial(number))
    return str(response)


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

    async def transfer(self, call_sid: str, number: str) -> None:
        """Replace the live call's TwiML with a `<Dial>` to `number`."""
        try:
            await self.client().calls(call_sid).update_async(twiml=dial_twiml(number))
        except TwilioRestException as exc:
            raise TwilioRestError(exc.status, exc.code, exc.msg) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TwilioRestError(0, None, type(exc).__name__) from None

    async def place_call(self, to: str, from_: str, url: str, status_callback: str = "") -> PlacedCall:
        """Ask Twilio to dial `to`; once answered it fetches `url` (our voice webhook)."""
        extra = {"status_callback": status_callback} if status_callback else {}
        try:
            call = await self.client().calls.create_async(to=to, from_=from_, url=url, **extra)
        except TwilioRestException as exc:
            raise TwilioRestError(exc.status, exc.code, exc.msg) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TwilioRestError(0, None, type(exc).__name__) from None
        return PlacedCall(call_sid=call.sid or "", status=str(call.status or ""))

    async def close(self) -> None:
        if self._http is not None and self._http.session is not None:
            await self._http.session.close()
