"""What Twilio does around the media stream, against the real stack: a transfer redirected
through the REST API (the Twilio REST emulator) while Twilio stops the stream, the
`<Dial action>` of a transfer nobody answered, a redirect Twilio refuses because the caller
already hung up, and the `<Connect action>` of a call the agent ended."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import websockets
from twilio.request_validator import RequestValidator

from proto import subjects
from proto.messages import Transfer
from tests.emulators.twilio_rest import ACCOUNT_SID, TwilioRestEmulator
from tests.integration.conftest import AUTH_TOKEN, own_stack, service_log, wait_until
from voxline.bus import Bus
from voxline.devstack import DevStack
from voxline.simulator import CallScript
from voxline.simulator.line import PhoneLine
from voxline.simulator.placement import place_call, stream_parameters, upgrade_headers
from voxline.simulator.twilio_stream import TwilioStream

pytestmark = pytest.mark.integration

CALLER, OUR_NUMBER, DESK = "+15005550006", "+15005550001", "+15005550123"


@pytest.fixture(scope="module")
def twilio() -> Iterator[TwilioRestEmulator]:
    emulator = TwilioRestEmulator(auth_token=AUTH_TOKEN).start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, twilio: TwilioRestEmulator) -> Iterator[DevStack]:
    env = {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "VOXLINE_TWILIO_API_BASE": twilio.base_url}
    with own_stack(tmp_path_factory, "twilio-callbacks", env) as s:
        yield s


@pytest.fixture
async def bus(stack: DevStack, twilio: TwilioRestEmulator) -> AsyncIterator[Bus]:
    twilio.reset()
    b = Bus("test-orders")
    await b.connect(stack.probe_url)
    yield b
    await b.close()


class Call:
    """A caller on the line: Twilio's webhook, then its media stream, as Twilio opens them."""

    def __init__(self, stack: DevStack, http: httpx.AsyncClient, script: CallScript) -> None:
        self.stack, self.http, self.script = stack, http, script
        self.sid = script.call_sid or ""
        self.line: PhoneLine | None = None

    async def start(self) -> None:
        target = await place_call(self.http, self.stack.gateway_url, self.script, AUTH_TOKEN)
        ws = await websockets.connect(
            target.url, compression=None, additional_headers=upgrade_headers(target.url, AUTH_TOKEN)
        )
        self.line = PhoneLine(ws, TwilioStream(self.sid, self.script.account_sid or ""))
        await self.line.start(stream_parameters(target.parameters, self.script))
        await wait_until(self.has_record, 10, "the orchestrator to take the call")

    async def record(self) -> dict[str, Any] | None:
        response = await self.http.get(f"{self.stack.gateway_url}/v1/calls/{self.sid}")
        return response.json() if response.status_code == 200 else None

    async def has_record(self) -> bool:
        return await self.record() is not None

    async def ended(self) -> bool:
        record = await self.record()
        return record is not None and record["status"] == "ended"

    async def twilio_post(self, url: str, **fields: str) -> httpx.Response:
        form = {"CallSid": self.sid, "AccountSid": ACCOUNT_SID, "From": CALLER, "To": OUR_NUMBER, **fields}
        signature = RequestValidator(AUTH_TOKEN).compute_signature(url, form)
        return await self.http.post(url, data=form, headers={"X-Twilio-Signature": signature})


def verbs(xml: str) -> list[tuple[str, dict[str, str], str]]:
    return [(e.tag, dict(e.attrib), (e.text or "").strip()) for e in ET.fromstring(xml)]


async def test_transfer_is_recorded_as_transferred_when_twilio_stops_the_stream_first(
    stack: DevStack, bus: Bus, twilio: TwilioRestEmulator
) -> None:
    """Twilio ends the media stream (`stop`) as the redirect takes the call over, which may
    be before the REST API answers; the record must not say the caller hung up."""
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(timeout=10.0) as http:
        call = Call(stack, http, CallScript(wait_for_greeting=False))
        twilio.inbound(call.sid, CALLER, OUR_NUMBER)
        await call.start()
        assert call.line is not None
        line = call.line

        def twilio_redirects(_sid: str) -> None:  # in the emulator's thread, before its answer
            asyncio.run_coroutine_threadsafe(line.hang_up(), loop).result(10)

        twilio.on_update = twilio_redirects
        await bus.publish(subjects.control(call.sid), Transfer(call_id=call.sid, to=DESK, reason="agent transfer"))
        await wait_until(call.ended, 15, "the call's record to end")
        record = await call.record()
        assert record is not None and record["end_reason"] == "transferred"

        (update,) = twilio.updated()
        action = f"{stack.gateway_url}/twilio/dial-ended"
        assert verbs(update.form["Twiml"]) == [
            ("Dial", {"action": action, "callerId": OUR_NUMBER, "timeout": "25"}, DESK)
        ]

        # Nobody picks up at the desk: Twilio asks the <Dial action> what to do with the caller.
        answer = await call.twilio_post(action, DialCallStatus="no-answer", DialCallDuration="0")
        assert [verb for verb, _, _ in verbs(answer.text)] == ["Say", "Hangup"]
        record = await call.record()
        assert record is not None
        assert (record["end_reason"], record["transfer_status"]) == ("transfer no-answer", "no-answer")


async def test_redirect_refused_because_the_caller_hung_up_ends_the_call_cleanly(
    stack: DevStack, bus: Bus, twilio: TwilioRestEmulator
) -> None:
    async with httpx.AsyncClient(timeout=10.0) as http:
        call = Call(stack, http, CallScript(wait_for_greeting=False))
        twilio.inbound(call.sid, CALLER, OUR_NUMBER)
        await call.start()
        twilio.end(call.sid)  # the caller hung up; the transfer order is already on its way
        await bus.publish(subjects.control(call.sid), Transfer(call_id=call.sid, to=DESK, reason="agent transfer"))
        await wait_until(call.ended, 15, "the call's record to end")
        record = await call.record()
        assert record is not None and record["end_reason"] == "transfer failed"
        assert twilio.updated() == []
        log = service_log(stack, "gateway")
        assert "code 21220" in log and "Call is not in-progress. Cannot redirect." in log
        assert stack.processes["gateway"].alive
        assert call.line is not None
        await call.line.hang_up()


async def test_connect_action_after_the_agent_hung_up_only_hangs_up(stack: DevStack) -> None:
    async with httpx.AsyncClient(timeout=10.0) as http:
        call = Call(stack, http, CallScript(agent_id="quick-idle"))
        await call.start()
        await wait_until(call.ended, 20, "the silent caller's goodbye and hang-up")
        record = await call.record()  # Twilio answers our close with its own: still the agent's doing
        assert record is not None and record["end_reason"] == "agent hung up"
        assert call.line is not None
        await call.line.hang_up()
        answer = await call.twilio_post(f"{stack.gateway_url}/twilio/stream-ended?agent=quick-idle")
        assert verbs(answer.text) == [("Hangup", {}, "")]


async def test_connect_action_after_a_refused_stream_apologises(stack: DevStack) -> None:
    async with httpx.AsyncClient(timeout=10.0) as http:
        script = CallScript(stream_token_override="forged.token.value")
        call = Call(stack, http, script)
        target = await place_call(http, stack.gateway_url, script, AUTH_TOKEN)
        async with websockets.connect(target.url, additional_headers=upgrade_headers(target.url, AUTH_TOKEN)) as ws:
            line = PhoneLine(ws, TwilioStream(call.sid, script.account_sid or ""))
            await line.start(stream_parameters(target.parameters, script))
            await line.wait_for(lambda: line.closed, 10)
            assert line.closed_by_gateway
        answer = await call.twilio_post(f"{stack.gateway_url}/twilio/stream-ended?agent=demo")
        verbs_said = verbs(answer.text)
        assert [verb for verb, _, _ in verbs_said] == ["Say", "Hangup"]
        assert "technical difficulties" in verbs_said[0][2]
        assert "media stream failed with the caller on the line" in service_log(stack, "gateway")
