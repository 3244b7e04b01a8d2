"""Outbound calls with answering-machine detection, over real sockets: `POST /v1/calls` on the
real stack, the gateway's Twilio SDK talking to the Twilio REST emulator, which answers the
call as a machine, a fax or a human would (Twilio's synchronous AMD: the voice URL fetched,
signed, with AnsweredBy) and keeps the TwiML our gateway gave it. A human then gets the
agent over a real media stream; a machine gets the voicemail message and a hang-up.

The brain is the OpenAI provider against the chat-completions emulator, which keeps every
request: a call placed with `variables` must have them in the prompt the model gets."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import websockets
from twilio.request_validator import RequestValidator

from tests.cloud.conftest import running
from tests.emulators.openai_chat import DEFAULT_KEY, OpenAiChatEmulator
from tests.emulators.twilio_rest import ACCOUNT_SID, TwilioRestEmulator, VoiceFetch
from tests.integration.conftest import AUTH_TOKEN, own_stack, service_log, wait_until
from voxline.devstack import DevStack
from voxline.simulator import Utterance
from voxline.simulator.caller import prepare_audio
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
def chat() -> Iterator[OpenAiChatEmulator]:
    yield from running(OpenAiChatEmulator())


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, twilio: TwilioRestEmulator, chat: OpenAiChatEmulator
) -> Iterator[DevStack]:
    env = {
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "VOXLINE_TWILIO_API_BASE": twilio.base_url,
        "VOXLINE_BRAIN_PROVIDER": "openai",
        "VOXLINE_OPENAI_API_KEY": DEFAULT_KEY,
        "VOXLINE_OPENAI_BASE_URL": chat.base_url,
        "VOXLINE_OPENAI_TIMEOUT_S": "2.0",
    }
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


VARIABLES = {"customer_name": "Ada Lovelace", "appointment": "Tuesday at 3 pm"}
VARIABLES_AGENT = {
    "id": "reminder",
    "name": "Reminder",
    "greeting": "Hello {{customer_name}}, this is {{clinic}} about {{ appointment }}.{{unset}}",
    "system_prompt": "You remind {{customer_name}} of the appointment on {{appointment}}. Their number is "
    "{{customer_number}}.",
    "default_variables": {"customer_name": "there", "clinic": "Smile Dental"},
    "outbound_allowlist": ["+1500555*"],
}
ASKED = "when was it again"


async def test_an_outbound_call_with_variables_greets_and_prompts_with_them(
    stack: DevStack, http: httpx.AsyncClient, twilio: TwilioRestEmulator, chat: OpenAiChatEmulator
) -> None:
    """POST /v1/calls with variables -> the signed voice URL -> the stream's parameters ->
    the greeting the callee hears and the prompt the model gets, with the values in; the
    record shows them, and the gateway's log never has them."""
    created = await http.put("/v1/agents/reminder", json=VARIABLES_AGENT)
    if created.status_code == 404:
        created = await http.post("/v1/agents", json=VARIABLES_AGENT)
    assert created.status_code in (200, 201), created.text
    sid = await dial(http, HUMAN, agent_id="reminder", variables=VARIABLES)
    fetch = await answered(twilio, sid)
    target = parse_twiml(fetch.twiml)
    assert "vars=" in fetch.url  # the values ride in the voice URL Twilio signs
    ws = await websockets.connect(
        target.url, compression=None, additional_headers=upgrade_headers(target.url, AUTH_TOKEN)
    )
    line = PhoneLine(ws, TwilioStream(sid, ACCOUNT_SID))
    await line.start({**target.parameters, "fake_transcripts": ASKED})  # what the fake STT hears
    before = len(chat.requests)
    try:
        assert await line.wait_reply_started(0.0, 15), "the greeting never came"
        assert await line.wait_silence(0.5, 15)
        since = line.clock()
        spoken = line.speak(prepare_audio(Utterance(text=ASKED)))
        assert await line.wait_spoken(spoken, 15)
        assert await line.wait_reply_started(since, 15) is not None, "no reply to the question"
    finally:
        await line.hang_up()

    async def ended() -> bool:
        body = await record(http, sid)
        return body is not None and body["status"] == "ended"

    await wait_until(ended, 10, "the orchestrator to end the call")
    body = await record(http, sid)
    assert body is not None and body["variables"] == VARIABLES, body
    [greeting] = [t for t in body["turns"] if t["kind"] == "greeting"]
    said = "Hello Ada Lovelace, this is Smile Dental about Tuesday at 3 pm."
    assert greeting["reply_text"] == said and greeting["heard_text"] == said, greeting
    asked = [r for r in chat.requests[before:] if r.messages and r.messages[-1]["content"] == ASKED]
    assert asked, [r.messages for r in chat.requests[before:]]
    assert asked[0].messages[0] == {
        "role": "system",
        "content": f"You remind Ada Lovelace of the appointment on Tuesday at 3 pm. Their number is {HUMAN}.",
    }
    log = service_log(stack, "gateway") + service_log(stack, "orchestrator") + service_log(stack, "brain")
    assert "Lovelace" not in log


async def test_bad_variables_are_refused_with_the_field_named(
    http: httpx.AsyncClient, twilio: TwilioRestEmulator
) -> None:
    cases: list[tuple[Any, str]] = [
        ({"first-name": "Ada"}, "variables.first-name"),
        ({"name": "x" * 501}, "variables.name"),
        ({"name": {"nested": 1}}, "variables.name"),
        ({f"k{i}": "v" for i in range(33)}, "variables"),
        ({"call_id": "mine"}, "variables.call_id"),
        ({f"k{i}": "v" * 200 for i in range(20)}, "variables"),  # over the voice URL's length
        ("Ada", "variables"),
    ]
    for variables, field in cases:
        response = await http.post("/v1/calls", json={"to": HUMAN, "from": OUR_NUMBER, "variables": variables})
        assert response.status_code == 422, (variables, response.text)
        error = response.json()["error"]
        assert (error["type"], error["field"]) == ("validation_error", field), (field, error)
    assert twilio.created() == []


async def test_a_voicemail_message_takes_the_calls_variables(
    http: httpx.AsyncClient, twilio: TwilioRestEmulator
) -> None:
    created = await http.put("/v1/agents/reminder", json=VARIABLES_AGENT)
    if created.status_code == 404:
        created = await http.post("/v1/agents", json=VARIABLES_AGENT)
    assert created.status_code in (200, 201), created.text
    message = "Hi {{customer_name}}, {{clinic}} here about {{appointment}}; call {{agent_number}}.{{unset}}"
    sid = await dial(
        http, MACHINE, agent_id="reminder", machine_detection=True, voicemail_message=message, variables=VARIABLES
    )
    fetch = await answered(twilio, sid)
    said = f"Hi Ada Lovelace, Smile Dental here about Tuesday at 3 pm; call {OUR_NUMBER}."
    assert verbs(fetch.twiml) == [("Say", said), ("Hangup", "")], fetch.twiml
    body = await record(http, sid)
    assert body is not None and (body["end_reason"], body["variables"]) == ("voicemail", VARIABLES), body
