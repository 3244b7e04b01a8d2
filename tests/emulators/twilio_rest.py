"""Twilio's REST Calls resource (API 2010-04-01) as a small aiohttp server: create a call
(`POST /2010-04-01/Accounts/{AccountSid}/Calls.json`), fetch one (`GET .../Calls/{CallSid}.json`)
and update one (`POST .../Calls/{CallSid}.json`, e.g. new TwiML for a transfer), with HTTP
basic auth (account SID : auth token), Twilio's JSON error bodies, injected failures, and
every request recorded for the tests. A placed call can be answered (`answers`, by To
number): the emulator then fetches the call's voice URL, signed, with `AnsweredBy` when the
call asked for answering-machine detection, and keeps the TwiML it got (`fetches`).

The emulator keeps a book of calls and their status, because Twilio's answers depend on it:
https://www.twilio.com/docs/voice/api/call-resource (Call resource: statuses, fetch, update,
StatusCallbackEvent) and https://www.twilio.com/docs/errors/21220 (a call that is not
in-progress cannot be redirected).
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import yarl
from aiohttp import web
from twilio.request_validator import RequestValidator

ACCOUNT_SID = "AC" + "7e1f" * 8
AUTH_TOKEN = "twilio-rest-test-token-51c0"
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
# https://www.twilio.com/docs/voice/api/call-resource#create-a-call-resource: the events a
# StatusCallbackEvent may name; any other value is refused with 21626.
STATUS_CALLBACK_EVENTS = frozenset({"initiated", "ringing", "answered", "completed"})
# Statuses in which a call is over (the Call resource's `status` enum).
ENDED = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
# https://www.twilio.com/docs/voice/answering-machine-detection: MachineDetection is
# `Enable` or `DetectMessageEnd`; AnsweredBy is one of these.
MACHINE_DETECTION = frozenset({"Enable", "DetectMessageEnd"})
ANSWERED_BY = frozenset(
    {"human", "machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax", "unknown"}
)


@dataclass
class RestRequest:
    path: str
    form: dict[str, str]
    status: int
    call_sid: str = ""  # the call updated, or the one created
    method: str = "POST"
    lists: dict[str, list[str]] = field(default_factory=dict)  # fields sent more than once


@dataclass
class VoiceFetch:
    """The emulator's request of a placed call's voice URL once the callee answered, and
    the TwiML our gateway gave it."""

    call_sid: str
    url: str
    form: dict[str, str]
    status: int
    twiml: str


@dataclass
class EmulatedCall:
    sid: str
    from_: str
    to: str
    direction: str  # "inbound" or "outbound-api"
    status: str  # queued, ringing, in-progress, completed, busy, failed, no-answer, canceled


class TwilioRestEmulator:
    def __init__(self, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN) -> None:
        self.account_sid, self.auth_token = account_sid, auth_token
        self.reset()
        self._tasks: set[asyncio.Task[None]] = set()  # the answers under way
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="twilio-rest-emulator", daemon=True)
        self.port = 0

    def reset(self) -> None:
        self.failures: list[int] = []  # statuses for the next requests, in order
        self.requests: list[RestRequest] = []
        self.calls: dict[str, EmulatedCall] = {}
        # Called (in the emulator's thread) when an update is accepted, before Twilio
        # answers it: what Twilio does to the call meanwhile (ends its media stream).
        self.on_update: Callable[[str], None] | None = None
        # Who answers a placed call, by its To number (an AnsweredBy value: "human",
        # "machine_end_beep", "fax"...). ASSUMPTION, a test hook: a call to a number not
        # listed is never answered (its voice URL is never fetched), as before this hook.
        # For a listed number the emulator fetches the call's Url as Twilio does once the
        # callee answered, signed, with AnsweredBy only when MachineDetection was asked for.
        self.answers: dict[str, str] = {}
        self.fetches: list[VoiceFetch] = []

    # --- the test's side of the calls --------------------------------------------------

    def inbound(self, call_sid: str, from_: str, to: str) -> None:
        """A caller rang one of our Twilio numbers and the call is up (in-progress)."""
        self.calls[call_sid] = EmulatedCall(call_sid, from_, to, "inbound", "in-progress")

    def end(self, call_sid: str, status: str = "completed") -> None:
        """The call is over (the caller hung up: completed)."""
        call = self.calls.setdefault(call_sid, EmulatedCall(call_sid, "", "", "inbound", status))
        call.status = status

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
        app.router.add_get("/2010-04-01/Accounts/{account}/Calls/{sid}.json", self._fetch)
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
        return [
            r for r in self.requests if r.method == "POST" and not r.path.endswith("/Calls.json") and r.status == 200
        ]

    @staticmethod
    def _error(status: int, code: int, message: str) -> web.Response:
        info = f"https://www.twilio.com/docs/errors/{code}"
        return web.json_response({"code": code, "message": message, "more_info": info, "status": status}, status=status)

    def _refusal(self, request: web.Request, path: str, form: dict[str, str]) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if auth != f"Basic {expected}" or request.match_info["account"] != self.account_sid:
            self.requests.append(RestRequest(path, form, 401, method=request.method))
            return self._error(401, 20003, "Authenticate")
        if self.failures:
            status = self.failures.pop(0)
            self.requests.append(RestRequest(path, form, status, method=request.method))
            return self._error(status, 20429 if status == 429 else 20500, "injected failure")
        return None

    def _json(self, call: EmulatedCall) -> dict[str, Any]:
        return {
            "sid": call.sid,
            "account_sid": self.account_sid,
            "to": call.to,
            "from": call.from_,
            "status": call.status,
            "direction": call.direction,
            "api_version": "2010-04-01",
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{call.sid}.json",
        }

    def _call(self, sid: str) -> EmulatedCall:
        # ASSUMPTION: a call the test did not put in the book is a live inbound call (the
        # simulator's calls never pass through this emulator); real Twilio would know it.
        return self.calls.setdefault(sid, EmulatedCall(sid, "", "", "inbound", "in-progress"))

    async def _create(self, request: web.Request) -> web.Response:
        post = await request.post()
        form = {k: str(v) for k, v in post.items()}
        lists = {k: [str(v) for v in post.getall(k)] for k in set(post.keys()) if len(post.getall(k)) > 1}
        path = request.path
        if (refused := self._refusal(request, path, form)) is not None:
            return refused
        for name in ("To", "From"):
            if not _E164.match(form.get(name, "")):
                self.requests.append(RestRequest(path, form, 400))
                return self._error(400, 21211 if name == "To" else 21212, f"Invalid '{name}' Phone Number")
        if not form.get("Url") and not form.get("Twiml"):
            self.requests.append(RestRequest(path, form, 400))
            return self._error(400, 21205, "Url or Twiml is required")
        events = [str(v) for v in post.getall("StatusCallbackEvent", [])]
        if any(e not in STATUS_CALLBACK_EVENTS for e in events):
            # https://www.twilio.com/docs/errors/21626 (Invalid 'StatusCallbackEvent')
            self.requests.append(RestRequest(path, form, 400))
            return self._error(400, 21626, "Invalid 'StatusCallbackEvent'")
        detection = form.get("MachineDetection", "")
        if detection and detection not in MACHINE_DETECTION:
            # ASSUMPTION: the docs name the allowed values but not Twilio's answer to another
            # one; a 400 like its other invalid parameters, with a code of the emulator's own.
            self.requests.append(RestRequest(path, form, 400))
            return self._error(400, 21201, "Invalid 'MachineDetection'")
        sid = "CA" + secrets.token_hex(16)
        lists["StatusCallbackEvent"] = events
        self.requests.append(RestRequest(path, form, 201, sid, lists=lists))
        call = self.calls[sid] = EmulatedCall(sid, form["From"], form["To"], "outbound-api", "queued")
        answer = self.answers.get(call.to)
        if answer is not None and form.get("Url"):
            task = asyncio.get_running_loop().create_task(self._answer(call, form, answer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response(self._json(call), status=201)

    def _signed_post(self, url: str, fields: dict[str, str]) -> dict[str, str]:
        return {"X-Twilio-Signature": RequestValidator(self.auth_token).compute_signature(url, fields)}

    async def _answer(self, call: EmulatedCall, created: dict[str, str], answered_by: str) -> None:
        """The callee picked up: Twilio requests the call's Url with the call's fields
        (https://www.twilio.com/docs/voice/twiml#request-parameters) plus, with machine
        detection, AnsweredBy (synchronous AMD: after detection). A TwiML that hangs up ends
        the call, reported to the status callback as `completed`."""
        call.status = "in-progress"
        form = {
            "CallSid": call.sid,
            "AccountSid": self.account_sid,
            "From": call.from_,
            "To": call.to,
            "CallStatus": "in-progress",
            "Direction": call.direction,
            "ApiVersion": "2010-04-01",
        }
        if created.get("MachineDetection"):
            form["AnsweredBy"] = answered_by
        url = created["Url"]
        async with aiohttp.ClientSession() as http:
            try:
                # The URL exactly as given (yarl would normalise it otherwise), as Twilio
                # requests and signs it.
                exact = yarl.URL(url, encoded=True)
                async with http.post(exact, data=form, headers=self._signed_post(url, form)) as response:
                    fetch = VoiceFetch(call.sid, url, form, response.status, await response.text())
            except aiohttp.ClientError as exc:
                fetch = VoiceFetch(call.sid, url, form, 0, repr(exc))
            if "<Hangup" in fetch.twiml and "<Connect" not in fetch.twiml:
                call.status = "completed"
                callback = created.get("StatusCallback", "")
                if callback:
                    done = {**form, "CallStatus": "completed"}
                    async with http.post(callback, data=done, headers=self._signed_post(callback, done)):
                        pass
            self.fetches.append(fetch)

    async def _fetch(self, request: web.Request) -> web.Response:
        path, sid = request.path, request.match_info["sid"]
        if (refused := self._refusal(request, path, {})) is not None:
            return refused
        self.requests.append(RestRequest(path, {}, 200, sid, method="GET"))
        return web.json_response(self._json(self._call(sid)))

    async def _update(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        path, sid = request.path, request.match_info["sid"]
        if (refused := self._refusal(request, path, form)) is not None:
            return refused
        call = self._call(sid)
        if (form.get("Twiml") or form.get("Url")) and call.status in ENDED:
            # https://www.twilio.com/docs/errors/21220: "You attempted a realtime operation
            # on a Call that was not in-progress. Calls that have completed cannot be
            # recorded or redirected." The API's own message for a redirect is this one.
            self.requests.append(RestRequest(path, form, 400, sid))
            return self._error(400, 21220, "Call is not in-progress. Cannot redirect.")
        if self.on_update is not None:
            self.on_update(sid)
        self.requests.append(RestRequest(path, form, 200, sid))
        return web.json_response(self._json(call))
