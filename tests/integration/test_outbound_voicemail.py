"""Outbound calls with answering-machine detection, over real sockets: `POST /v1/calls` on the
real stack, the gateway's Twilio SDK talking to the Twilio REST emulator, which answers the
call as a machine, a fax or a human would (Twilio's synchronous AMD: the voice URL fetched,
signed, with AnsweredBy) and keeps the TwiML our gateway gave it. A human then gets the
agent over a real media stream; a machine gets the voicemail message and a hang-up."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import websockets
from twilio.request_validator import RequestValidator

from tests.emulators.twilio_rest import ACCOUNT_SID, TwilioRestEmulator, VoiceFetch
from tests.integration.conftest import AUTH_TOKEN, own_stack, service_log, wait_until
from voxline.devstack import DevStack
from voxline.simulator.line import PhoneLine
from voxline.simulator.placement import upgrade_headers
from voxline.simulator.twilio_stream import TwilioStream, parse_twiml

pytestmark = pytest.mark.integration

OUR_NUMBER = "+15005550001"
MACHINE, SILENT_MACHINE, FAX, HUMAN = "+15005550101", "+15005550102", "+15005550103", "+15005550104"
MESSAGE = "Hi, this is the clinic: your appointment moved to Friday at 3 pm & please call back."


@pytest.fixture(scope="module")
def twilio() -> Iterator[TwilioRestEmulator]:
    emulator = TwilioRestEmulator(auth_token=AUTH_TOKEN).start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, twilio: TwilioRestEmulator) -> Iterator[DevStack]:
    env = {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "VOXLINE_TWILIO_API_BASE": twilio.base_url}
    with own_stack(tmp_path_factory, "outbound-voicemail", env) as s:
        yield s


@pytest.fixture
async def http(stack: DevStack, twilio: TwilioRestEmulator) -> AsyncIterator[httpx.AsyncClient]:
    twilio.reset()
    twilio.answers = {MACHINE: "machine_end_beep", SILENT_MACHINE: "machine_end_silence", FAX: "fax", HUMAN: "human"}
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as client:
        yield client


async def dial(http: httpx.AsyncClient, to: str, **fields: Any) -> str:
    response = await http.post("/v1/calls", json={"to": to, "from": OUR_NUMBER, "agent_id": "demo", **fields})
    assert response.status_code == 201, response.text
    return str(response.json()["call_sid"])


async def answered(twilio: TwilioRestEmulator, sid: str) -> VoiceFetch:
    async def fetched() -> bool:
        return any(f.call_sid == sid for f in twilio.fetches)

    await wait_until(fetched, 10, "the emulated callee to answer and Twilio to fetch the voice URL")
    return next(f for f in twilio.fetches if f.call_sid == sid)


async def record(http: httpx.AsyncClient, sid: str) -> dict[str, Any] | None:
    response = await http.get(f"/v1/calls/{sid}")
    return dict(response.json()) if response.status_code == 200 else None


def verbs(xml: str) -> list[tuple[str, str]]:
    return [(e.tag, (e.text or "").strip()) for e in ET.fromstring(xml).iter() if e.tag != "Response"]


async def test_a_machine_gets_the_voicemail_message_and_a_hang_up_never_the_agent(
    http: httpx.AsyncClient, twilio: TwilioRestEmulator
) -> None:
    sid = await dial(http, MACHINE, machine_detection=True, voicemail_message=MESSAGE)
    (created,) = twilio.created()
    assert created.form["MachineDetection"] == "DetectMessageEnd"
    fetch = await answered(twilio, sid)
    assert fetch.form["AnsweredBy"] == "machine_end_beep" and fetch.status == 200, fetch
    # Twilio reads the message after the beep and hangs up: no <Connect><Stream>, so no
    # media stream is ever opened and no agent talks to the machine.
    assert verbs(fetch.twiml) == [("Say", MESSAGE), ("Hangup", "")], fetch.twiml
    body = await record(http, sid)
    assert body is not None
    assert (body["status"], body["direction"], body["end_reason"]) == ("ended", "outbound", "voicemail")
    assert (body["answered_by"], body["agent_id"], body["turns"]) == ("machine_end_beep", "demo", [])
    assert (body["from_number"], body["to_number"]) == (OUR_NUMBER, MACHINE)
    # The status callback's `completed` that follows the hang-up leaves the record as it is.
    assert twilio.calls[sid].status == "completed"
    assert await record(http, sid) == body


async def test_a_machine_without_a_message_and_a_fax_are_hung_up_on(
    http: httpx.AsyncClient, twilio: TwilioRestEmulator
) -> None:
    silent = await dial(http, SILENT_MACHINE, machine_detection=True)
    fax = await dial(http, FAX, machine_detection=True, voicemail_message=MESSAGE)
    for sid, answered_by in ((silent, "machine_end_silence"), (fax, "fax")):
        fetch = await answered(twilio, sid)
        assert verbs(fetch.twiml) == [("Hangup", "")], fetch.twiml
        body = await record(http, sid)
        assert body is not None and (body["end_reason"], body["answered_by"]) == ("machine", answered_by)


async def test_a_human_answering_with_detection_on_talks_to_the_agent(
    http: httpx.AsyncClient, twilio: TwilioRestEmulator
) -> None:
    sid = await dial(http, HUMAN, machine_detection=True, voicemail_message=MESSAGE)
    fetch = await answered(twilio, sid)
    assert fetch.form["AnsweredBy"] == "human"
    assert MESSAGE not in fetch.twiml
    target = parse_twiml(fetch.twiml)  # <Connect><Stream>: Twilio opens the media stream
    ws = await websockets.connect(
        target.url, compression=None, additional_headers=upgrade_headers(target.url, AUTH_TOKEN)
    )
    line = PhoneLine(ws, TwilioStream(sid, ACCOUNT_SID))
    await line.start(target.parameters)
    try:
        assert await line.wait_for(lambda: line.media_received > 0, 15), "the agent's greeting never came"
        body = await record(http, sid)
        assert body is not None and (body["status"], body["direction"]) == ("in-progress", "outbound"), body
    finally:
        await line.hang_up()

    async def ended() -> bool:
        body = await record(http, sid)
        return body is not None and body["status"] == "ended"

    await wait_until(ended, 10, "the orchestrator to end the call")
    body = await record(http, sid)
    assert body is not None and body["end_reason"] not in ("voicemail", "machine") and body["turns"], body


async def test_bad_detection_fields_are_refused_with_the_field_named(
    http: httpx.AsyncClient, twilio: TwilioRestEmulator
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"machine_detection": "maybe"}, "machine_detection"),
        ({"machine_detection": 1}, "machine_detection"),
        ({"voicemail_message": MESSAGE}, "voicemail_message"),  # without machine_detection
        ({"machine_detection": True, "voicemail_message": "x" * 1001}, "voicemail_message"),
        ({"machine_detection": True, "voicemail_message": "日本語" * 300}, "voicemail_message"),  # URL too long
    ]
    for fields, field in cases:
        response = await http.post("/v1/calls", json={"to": MACHINE, "from": OUR_NUMBER, **fields})
        assert response.status_code == 422, (fields, response.text)
        error = response.json()["error"]
        assert (error["type"], error["field"]) == ("validation_error", field), (fields, error)
    assert twilio.created() == []


async def test_a_voicemail_message_swapped_in_the_url_is_refused_and_not_logged(
    stack: DevStack, http: httpx.AsyncClient
) -> None:
    """The message rides in the voice URL, which Twilio signs: whoever swaps it (to leave
    their own words on someone's voicemail in our name) fails the signature check."""
    form = {"CallSid": "CA" + "5e" * 16, "AccountSid": ACCOUNT_SID, "From": OUR_NUMBER, "To": MACHINE}
    form.update({"Direction": "outbound-api", "CallStatus": "in-progress", "AnsweredBy": "machine_end_beep"})
    signed = f"{stack.gateway_url}/twilio/voice?agent=demo&voicemail={quote(MESSAGE, safe='')}"
    signature = RequestValidator(AUTH_TOKEN).compute_signature(signed, form)
    forged_text = "Your account is locked, call +19005550199 now"
    forged = f"{stack.gateway_url}/twilio/voice?agent=demo&voicemail={quote(forged_text, safe='')}"
    response = await http.post(forged, data=form, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 403 and forged_text not in response.text
    genuine = await http.post(signed, data=form, headers={"X-Twilio-Signature": signature})
    assert verbs(genuine.text) == [("Say", MESSAGE), ("Hangup", "")]
    log = service_log(stack, "gateway")
    assert "rejected a webhook with a bad X-Twilio-Signature" in log
    assert "locked" not in log and "appointment" not in log
