"""Twilio's REST Calls resource (API 2010-04-01) as a small aiohttp server: create a call
(`POST /2010-04-01/Accounts/{AccountSid}/Calls.json`) and update one
(`POST .../Calls/{CallSid}.json`, e.g. new TwiML for a transfer), with HTTP basic auth
(account SID : auth token), Twilio's JSON error bodies, injected failures, and every
request recorded for the tests."""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from aiohttp import web

ACCOUNT_SID = "AC" + "7e1f" * 8
AUTH_TOKEN = "twilio-rest-test-token-51c0"
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


@dataclass
class RestRequest:
    path: str
    form: dict[str, str]
    status: int
    call_sid: str = ""  # the call updated, or the one created


class TwilioRestEmulator:
    def __init__(self, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN) -> None:
        self.account_sid, self.auth_token = account_sid, auth_token
        self.reset()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="twilio-rest-emulator", daemon=True)
        self.port = 0

    def reset(self) -> None:
        self.failures: list[int] = []  # statuses for the next requests, in order
        self.requests: list[RestRequest] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TwilioRestEmulator:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls.json", self._create)
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{sid}.json", self._update)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def created(self) -> list[RestRequest]:
        return [r for r in self.requests if r.path.endswith("/Calls.json") and r.status == 201]

    def updated(self) -> list[RestRequest]:
        return [r for r in self.requests if not r.path.endswith("/Calls.json") and r.status == 200]

    @staticmethod
    def _error(status: int, code: int, message: str) -> web.Response:
        info = f"https://www.twilio.com/docs/errors/{code}"
        return web.json_response({"code": code, "message": message, "more_info": info, "status": status}, status=status)

    def _refusal(self, request: web.Request, path: str, form: dict[str, str]) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if auth != f"Basic {expected}" or request.match_info["account"] != self.account_sid:
            self.requests.append(RestRequest(path, form, 401))
            return self._error(401, 20003, "Authenticate")
        if self.failures:
            status = self.failures.pop(0)
            self.requests.append(RestRequest(path, form, status))
            return self._error(status, 20429 if status == 429 else 20500, "injected failure")
        return None

    def _call(self, sid: str, form: dict[str, str], status: str) -> dict[str, Any]:
        return {
            "sid": sid,
            "account_sid": self.account_sid,
            "to": form.get("To", ""),
            "from": form.get("From", ""),
            "status": status,
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{sid}.json",
        }

    async def _create(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        path = request.path
        if (refused := self._refusal(request, path, form)) is not None:
            return refused
        for field in ("To", "From"):
            if not _E164.match(form.get(field, "")):
                self.requests.append(RestRequest(path, form, 400))
                return self._error(400, 21211 if field == "To" else 21212, f"Invalid '{field}' Phone Number")
        if not form.get("Url") and not form.get("Twiml"):
            self.requests.append(RestRequest(path, form, 400))
            return self._error(400, 21205, "Url or Twiml is required")
        sid = "CA" + secrets.token_hex(16)
        self.requests.append(RestRequest(path, form, 201, sid))
        return web.json_response(self._call(sid, form, "queued"), status=201)

    async def _update(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        path, sid = request.path, request.match_info["sid"]
        if (refused := self._refusal(request, path, form)) is not None:
            return refused
        self.requests.append(RestRequest(path, form, 200, sid))
        return web.json_response(self._call(sid, form, "in-progress"))
