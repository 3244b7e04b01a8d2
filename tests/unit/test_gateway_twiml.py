"""The gateway's Twilio TwiML and REST side, in process: its HTTP app on a real bus, Twilio's
requests signed as Twilio signs them, and the Twilio REST emulator on the other end of the
SDK. What the caller hears after the media stream, a transfer's `<Dial>`, the outbound
call's status events, and a redirect Twilio refuses because the caller hung up."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from twilio.request_validator import RequestValidator

from proto.records import CALL_RECORDS_BUCKET, STREAM_ENDS_BUCKET, CallRecord
from services.gateway.app import Gateway, create_app
from services.gateway.call_outcomes import StreamEnd
from services.gateway.twilio_rest import CallNotInProgress, TwilioRest
from tests.emulators.twilio_rest import ACCOUNT_SID, TwilioRestEmulator
from voxline.agents import AgentStore
from voxline.bus import Bus
from voxline.config import GatewaySettings

AUTH_TOKEN = "gateway-twiml-test-token"
BASE = "https://voice.example.com"
CALL_SID = "CA" + "ab12" * 8
CALLER, OUR_NUMBER, DESK = "+15005550006", "+15005550001", "+15005550123"
FAILURE = AgentStore().get("demo").failure_message


@pytest.fixture(scope="module")
def twilio() -> Iterator[TwilioRestEmulator]:
    emulator = TwilioRestEmulator(auth_token=AUTH_TOKEN).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def settings(twilio: TwilioRestEmulator) -> GatewaySettings:
    twilio.reset()
    return GatewaySettings(
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        twilio_api_base=twilio.base_url,
        public_url=BASE,
        transfer_timeout_s=20,
        stream_token_secret="shared-by-every-gateway-" + "x" * 16,  # one stream, any gateway
    )


@pytest.fixture
async def gateway(worker_bus: Bus, settings: GatewaySettings) -> AsyncIterator[Gateway]:
    for bucket in (CALL_RECORDS_BUCKET, STREAM_ENDS_BUCKET):
        await worker_bus.create_bucket(bucket, ttl_s=3600)
        await worker_bus.kv_delete(bucket, CALL_SID)
    gw = Gateway(worker_bus, settings)
    yield gw
    await gw.stop()


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client


async def twilio_post(http: httpx.AsyncClient, url: str, form: dict[str, str]) -> httpx.Response:
    """POST as Twilio does: the full URL and the form fields signed with the auth token."""
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, form)
    return await http.post(url, data=form, headers={"X-Twilio-Signature": signature})


def call_form(**extra: str) -> dict[str, str]:
    form = {"CallSid": CALL_SID, "AccountSid": ACCOUNT_SID, "From": CALLER, "To": OUR_NUMBER}
    return {**form, "Direction": "inbound", "CallStatus": "in-progress", **extra}


def verbs(xml: str) -> list[tuple[str, dict[str, str], str]]:
    return [(e.tag, dict(e.attrib), (e.text or "").strip()) for e in ET.fromstring(xml)]


# --- the webhook's TwiML ----------------------------------------------------------------


async def test_media_stream_twiml_asks_for_connect_action_and_stream_status(http: httpx.AsyncClient) -> None:
    response = await twilio_post(http, f"{BASE}/twilio/voice?agent=demo", call_form())
    assert response.status_code == 200
    connect = ET.fromstring(response.text).find("Connect")
    assert connect is not None
    assert connect.get("action") == f"{BASE}/twilio/stream-ended?agent=demo"
    stream = connect.find("Stream")
    assert stream is not None and stream.get("url") == "wss://voice.example.com/twilio/media"
    assert stream.get("statusCallback") == f"{BASE}/twilio/stream-status?agent=demo"
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert parameters["from"] == CALLER and parameters["to"] == OUR_NUMBER


@pytest.mark.parametrize(
    "path", ["/twilio/stream-ended", "/twilio/stream-status", "/twilio/dial-ended", "/twilio/status"]
)
async def test_twilio_callbacks_need_twilios_signature(http: httpx.AsyncClient, path: str) -> None:
    url = f"{BASE}{path}?agent=demo"
    forged = await http.post(url, data=call_form(), headers={"X-Twilio-Signature": "bm90LWEtc2lnbmF0dXJl"})
    assert forged.status_code == 403
    signed = await twilio_post(http, url, call_form(DialCallStatus="completed", StreamEvent="stream-started"))
    assert signed.status_code in (200, 204)


# --- after the media stream: the <Connect action> ---------------------------------------


async def test_stream_that_failed_gets_an_apology_and_the_reason_logged(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    error = "Stream - WebSocket - Connection Refused"
    status = await twilio_post(
        http, f"{BASE}/twilio/stream-status?agent=demo", call_form(StreamEvent="stream-error", StreamError=error)
    )
    assert status.status_code == 204
    response = await twilio_post(http, f"{BASE}/twilio/stream-ended?agent=demo", call_form())
    assert verbs(response.text) == [("Say", {}, FAILURE), ("Hangup", {}, "")]
    failed = [r for r in caplog.records if r.levelno == logging.ERROR and "media stream failed" in r.getMessage()]
    assert failed and error in failed[0].getMessage()


async def test_stream_the_gateway_refused_gets_an_apology(gateway: Gateway, http: httpx.AsyncClient) -> None:
    await gateway.outcomes.stream_ended(CALL_SID, StreamEnd(1011, "call refused"))
    response = await twilio_post(http, f"{BASE}/twilio/stream-ended?agent=demo", call_form())
    assert verbs(response.text) == [("Say", {}, FAILURE), ("Hangup", {}, "")]


async def test_stream_the_agent_ended_just_hangs_up(gateway: Gateway, http: httpx.AsyncClient) -> None:
    await gateway.outcomes.stream_ended(CALL_SID, StreamEnd(1000, "agent ended the call"))
    response = await twilio_post(http, f"{BASE}/twilio/stream-ended?agent=demo", call_form())
    assert verbs(response.text) == [("Hangup", {}, "")]


async def test_transfer_the_rest_api_could_not_make_is_dialled_from_the_connect_action(
    gateway: Gateway, http: httpx.AsyncClient, twilio: TwilioRestEmulator, worker_bus: Bus
) -> None:
    await in_progress(worker_bus)  # the call's record names its agent, whose allowlist has DESK
    twilio.failures = [503, 503]  # Twilio's API is down: fetch and redirect both fail
    with pytest.raises(Exception, match="503"):
        await gateway.transfer(CALL_SID, DESK)
    await gateway.outcomes.stream_ended(CALL_SID, StreamEnd(1000, "transfer failed"))
    response = await twilio_post(http, f"{BASE}/twilio/stream-ended?agent=demo", call_form())
    dial = {"timeout": "20", "callerId": OUR_NUMBER, "action": f"{BASE}/twilio/dial-ended"}
    assert verbs(response.text) == [("Dial", dial, DESK)]


# --- behind a load balancer: the <Connect action> on another gateway --------------------


@pytest.fixture
async def other_http(worker_bus: Bus, settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    """A second gateway on the same bus: where the load balancer sends Twilio's callback."""
    other = Gateway(worker_bus, settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(other)), base_url=BASE) as client:
        yield client
    await other.stop()


async def in_progress(bus: Bus) -> None:
    record = CallRecord(call_id=CALL_SID, call_sid=CALL_SID, agent_id="demo", status="in-progress", started_at_us=1)
    await bus.kv_put(CALL_RECORDS_BUCKET, CALL_SID, record)


def stream_parameters(xml: str) -> dict[str, str]:
    stream = ET.fromstring(xml).find("./Connect/Stream")
    assert stream is not None, xml
    return {str(p.get("name")): str(p.get("value")) for p in stream.findall("Parameter")}


async def test_another_gateway_hangs_up_a_stream_the_agent_ended(
    gateway: Gateway, http: httpx.AsyncClient, other_http: httpx.AsyncClient, worker_bus: Bus
) -> None:
    await in_progress(worker_bus)  # the owner has not written the end yet: the stream's end decides
    await gateway.outcomes.stream_ended(CALL_SID, StreamEnd(1000, "agent ended the call"))
    response = await twilio_post(other_http, f"{BASE}/twilio/stream-ended?agent=demo", call_form())
    assert verbs(response.text) == [("Hangup", {}, "")]


async def test_another_gateway_dials_the_transfer_the_agent_ordered(
    gateway: Gateway, other_http: httpx.AsyncClient, twilio: TwilioRestEmulator, worker_bus: Bus
) -> None:
    await in_progress(worker_bus)
    twilio.failures = [503, 503]
    with pytest.raises(Exception, match="503"):
        await gateway.transfer(CALL_SID, DESK)
    await gateway.outcomes.stream_ended(CALL_SID, StreamEnd(1000, "transfer failed"))
    response = await twilio_post(other_http, f"{BASE}/twilio/stream-ended?agent=demo", call_form())
    assert [v[0] for v in verbs(response.text)] == ["Dial"] and verbs(response.text)[0][2] == DESK


async def test_a_stream_whose_gateway_died_gets_a_new_stream_on_another(
    gateway: Gateway, other_http: httpx.AsyncClient, worker_bus: Bus
) -> None:
    await in_progress(worker_bus)  # nothing was recorded of the stream: its gateway died with it
    response = await twilio_post(other_http, f"{BASE}/twilio/stream-ended?agent=demo", call_form())
    connect = ET.fromstring(response.text).find("Connect")
    assert connect is not None and connect.get("action") == f"{BASE}/twilio/stream-ended?agent=demo"
    parameters = stream_parameters(response.text)
    assert parameters["resume"] == "1" and parameters["agent_id"] == "demo"
    gateway.tokens.check(parameters["stream_token"], CALL_SID, "demo", ACCOUNT_SID)  # the stream accepts it


async def test_a_broken_stream_is_resumed_only_while_the_call_is_in_progress(
    gateway: Gateway, http: httpx.AsyncClient, worker_bus: Bus
) -> None:
    await gateway.outcomes.stream_ended(CALL_SID, StreamEnd(1000, "stream closed"))
    ended = CallRecord(call_id=CALL_SID, call_sid=CALL_SID, agent_id="demo", status="ended", started_at_us=1)
    await worker_bus.kv_put(CALL_RECORDS_BUCKET, CALL_SID, ended)
    response = await twilio_post(http, f"{BASE}/twilio/stream-ended?agent=demo", call_form())
    assert verbs(response.text) == [("Say", {}, FAILURE), ("Hangup", {}, "")]


async def test_a_stream_that_keeps_breaking_is_resumed_at_most_stream_resumes_max_times(
    gateway: Gateway, http: httpx.AsyncClient, worker_bus: Bus, settings: GatewaySettings
) -> None:
    await in_progress(worker_bus)
    answers = []
    for _ in range(settings.stream_resumes_max + 1):
        await gateway.outcomes.stream_ended(CALL_SID, StreamEnd(1000, "stream closed"))
        response = await twilio_post(http, f"{BASE}/twilio/stream-ended?agent=demo", call_form())
        answers.append(ET.fromstring(response.text)[0].tag)
    assert answers == ["Connect"] * settings.stream_resumes_max + ["Say"]


# --- transfers --------------------------------------------------------------------------


async def test_transfer_dial_rings_a_while_shows_our_number_and_reports_back(
    gateway: Gateway, twilio: TwilioRestEmulator, worker_bus: Bus
) -> None:
    await in_progress(worker_bus)
    twilio.inbound(CALL_SID, CALLER, OUR_NUMBER)
    await gateway.transfer(CALL_SID, DESK)
    (update,) = twilio.updated()
    assert update.call_sid == CALL_SID
    dial = {"timeout": "20", "callerId": OUR_NUMBER, "action": f"{BASE}/twilio/dial-ended"}
    assert verbs(update.form["Twiml"]) == [("Dial", dial, DESK)]


async def test_outbound_call_transfer_shows_the_number_we_called_from(settings: GatewaySettings) -> None:
    twilio_rest = TwilioRest(settings)
    placed = await twilio_rest.place_call(CALLER, OUR_NUMBER, f"{BASE}/twilio/voice")
    await twilio_rest.transfer(placed.call_sid, DESK)
    assert await twilio_rest.caller_id(placed.call_sid) == OUR_NUMBER
    await twilio_rest.close()


async def test_redirect_after_the_caller_hung_up_is_refused_with_21220(
    settings: GatewaySettings, twilio: TwilioRestEmulator
) -> None:
    twilio.inbound(CALL_SID, CALLER, OUR_NUMBER)
    twilio.end(CALL_SID)
    twilio_rest = TwilioRest(settings)
    with pytest.raises(CallNotInProgress) as refused:
        await twilio_rest.transfer(CALL_SID, DESK)
    await twilio_rest.close()
    assert refused.value.status == 400 and refused.value.code == 21220
    assert "not in-progress" in str(refused.value)
    assert twilio.updated() == []


@pytest.mark.parametrize("dial_status", ["no-answer", "busy", "failed"])
async def test_transfer_nobody_answered_is_told_to_the_caller_and_recorded(
    worker_bus: Bus, http: httpx.AsyncClient, dial_status: str
) -> None:
    record = CallRecord(call_id=CALL_SID, call_sid=CALL_SID, agent_id="demo", status="ended", started_at_us=1)
    record.end_reason = "transferred"
    await worker_bus.kv_put(CALL_RECORDS_BUCKET, CALL_SID, record)
    response = await twilio_post(http, f"{BASE}/twilio/dial-ended", call_form(DialCallStatus=dial_status))
    said = AgentStore().get("demo").transfer_failed_message
    assert verbs(response.text) == [("Say", {}, said), ("Hangup", {}, "")]
    saved = await worker_bus.kv_get(CALL_RECORDS_BUCKET, CALL_SID, CallRecord)
    assert saved is not None
    assert (saved.transfer_status, saved.end_reason) == (dial_status, f"transfer {dial_status}")


async def test_transfer_answered_ends_with_the_human(worker_bus: Bus, http: httpx.AsyncClient) -> None:
    record = CallRecord(call_id=CALL_SID, call_sid=CALL_SID, agent_id="demo", status="ended", started_at_us=1)
    record.end_reason = "transferred"
    await worker_bus.kv_put(CALL_RECORDS_BUCKET, CALL_SID, record)
    response = await twilio_post(http, f"{BASE}/twilio/dial-ended", call_form(DialCallStatus="completed"))
    assert verbs(response.text) == [("Hangup", {}, "")]
    saved = await worker_bus.kv_get(CALL_RECORDS_BUCKET, CALL_SID, CallRecord)
    assert saved is not None and (saved.transfer_status, saved.end_reason) == ("completed", "transferred")


# --- outbound calls ---------------------------------------------------------------------


async def test_outbound_call_asks_for_every_progress_event(http: httpx.AsyncClient, twilio: TwilioRestEmulator) -> None:
    response = await http.post("/v1/calls", json={"to": CALLER, "from": OUR_NUMBER, "agent_id": "demo"})
    assert response.status_code == 201, response.text
    (created,) = twilio.created()
    assert created.form["StatusCallback"] == f"{BASE}/twilio/status?agent=demo"
    assert created.lists["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]


async def test_outbound_call_nobody_answered_gets_a_record(worker_bus: Bus, http: httpx.AsyncClient) -> None:
    form = call_form(CallStatus="no-answer", Direction="outbound-api", From=OUR_NUMBER, To=CALLER)
    for status in ("initiated", "ringing"):
        await twilio_post(http, f"{BASE}/twilio/status?agent=demo", {**form, "CallStatus": status})
    assert await worker_bus.kv_get(CALL_RECORDS_BUCKET, CALL_SID, CallRecord) is None
    response = await twilio_post(http, f"{BASE}/twilio/status?agent=demo", form)
    assert response.status_code == 204
    record = await http.get(f"/v1/calls/{CALL_SID}")
    assert record.status_code == 200
    body = record.json()
    assert (body["status"], body["end_reason"], body["agent_id"]) == ("ended", "no-answer", "demo")
    assert (body["from_number"], body["to_number"]) == (OUR_NUMBER, CALLER)
