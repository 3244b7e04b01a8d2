"""The toll-fraud guard: where an agent may dial. Allowlist matching, the agent's checks at
load, the tool schema the model is shown, the brain's check of the model's number (through
the official SDK and the chat-completions emulator), and the gateway's own checks of a
transfer order and of `POST /v1/calls` (its HTTP app on a real bus, the Twilio REST
emulator behind the SDK). The whole stack is tests/cloud/test_toll_fraud.py."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from proto.messages import BrainTurn
from proto.records import CALL_RECORDS_BUCKET, STREAM_ENDS_BUCKET, CallRecord
from services.brain.providers import ReplyAction, Sentence
from services.brain.providers.openai_chat import OpenAIChatProvider
from services.brain.providers.tool_calls import ToolCall, call_action
from services.gateway.app import Gateway, create_app
from tests.emulators.openai_chat import DEFAULT_KEY, OpenAiChatEmulator, Reply
from tests.emulators.twilio_rest import ACCOUNT_SID, TwilioRestEmulator
from voxline.agents import Agent, AgentStore, InvalidAgent
from voxline.agents.dialling import Allowlist, DestinationNotAllowed, is_entry, normalise
from voxline.agents.tools import Tool
from voxline.bus import Bus
from voxline.config import BrainSettings, GatewaySettings, OpenAiLlmSettings

DESK, PREMIUM = "+14155550123", "+19005550199"
ARABIC_INDIC = "+1\u0664\u0661\u0665\u0665\u0665\u0665\u0660\u0661\u0662\u0663"  # \d would take them
FULLWIDTH = "\uff0b\uff11\uff14\uff11\uff15\uff15\uff15\uff15\uff10\uff11\uff12\uff13"
CALL_SID = "CA" + "f00d" * 8
AUTH_TOKEN = "toll-fraud-test-token"


def agent(**fields: object) -> Agent:
    return Agent(id="a", name="A", greeting="Hi.", system_prompt="", **fields)  # type: ignore[arg-type]


FREE = Tool(name="transfer", description="Transfer the caller.", kind="transfer_call")


def asked(number: str, key: str = "phone_number") -> ToolCall:
    return ToolCall("call_1", "transfer", [json.dumps({key: number})])


# --- matching ---------------------------------------------------------------------------


def test_exact_entries_match_only_themselves_and_prefixes_match_what_starts_with_them() -> None:
    allow = Allowlist([DESK, "+1415666*"])
    assert allow.allows(DESK) and allow.allows("+14156660000") and allow.allows("+1415666")
    assert not allow.allows(DESK + "9")  # an exact number is not a prefix
    assert not allow.allows("+1415555012")
    assert not allow.allows("+14156670000")
    # '+1900' vs '+19005': a prefix is matched digit by digit, never by number value
    assert Allowlist(["+19005*"]).allows("+19005550199") and not Allowlist(["+19005*"]).allows("+19004550199")
    assert not Allowlist(["+1900555"]).allows("+19005550199")  # exact, though it is the number's start
    assert not Allowlist([]).allows(DESK) and not Allowlist([])


@pytest.mark.parametrize(
    "number",
    [
        "",
        "14155550123",  # no +
        "+04155550123",  # no country code starts with 0
        "+1415",  # too short
        "+1415555012345678",  # 16 digits: longer than E.164
        "+1415555*",  # a prefix is not a number
        "+14155550123 ",  # whitespace is the model's formatting, never the allowlist's
        "+1 415 555 0123",
        "+14155550123\n",
        "++14155550123",
        "+14155550123x1",
        ARABIC_INDIC,
        FULLWIDTH,
        "+1415555\u200b0123",  # zero-width space
    ],
)
def test_only_strict_e164_numbers_can_be_allowed(number: str) -> None:
    assert not Allowlist([DESK, "+1*"]).allows(number)


def test_entries_must_be_numbers_or_prefixes() -> None:
    assert is_entry(DESK) and is_entry("+1415555*") and is_entry("+4*")
    for bad in ("*", "+*", "1415*", "+1415*5", "+1 415 555 0123", "+1415555**", "+١٤١٥*", "+14155550123*9"):
        assert not is_entry(bad), bad


def test_the_models_ascii_formatting_is_removed_and_nothing_else() -> None:
    assert normalise("+1 (415) 555-0123") == normalise("+1.415.555.0123") == normalise(f" {DESK} ") == DESK
    for bad in ("+1\u00a0415\u00a0555\u00a00123", ARABIC_INDIC, FULLWIDTH, "1 415 555 0123", "call +1 415"):
        assert normalise(bad) == "", bad


# --- the agent at load ------------------------------------------------------------------


def load(tmp_path: Path, toml: str) -> Agent:
    (tmp_path / "x.toml").write_text(f'name = "X"\ngreeting = "Hi."\nsystem_prompt = "S"\n{toml}')
    return AgentStore(tmp_path).get("x")


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ('transfer_allowlist = ["+1 415 555 0123"]', "transfer_allowlist[0]"),
        (f'transfer_allowlist = ["{DESK}", "*"]', "transfer_allowlist[1]"),
        ('outbound_allowlist = ["4155550123"]', "outbound_allowlist[0]"),
        ('[[tools]]\nname = "t"\ndescription = "d"\nkind = "transfer_call"\nto = "front desk"', "tools[0].to"),
        (
            f'transfer_allowlist = ["+44*"]\n[[tools]]\nname = "t"\ndescription = "d"\nkind = "transfer_call"\n'
            f'to = "{DESK}"',
            "tools[0].to",
        ),
    ],
)
def test_a_bad_destination_makes_the_agent_invalid_naming_the_field(tmp_path: Path, toml: str, named: str) -> None:
    with pytest.raises(InvalidAgent, match=named.replace("[", r"\[").replace("]", r"\]")):
        load(tmp_path, toml)


def test_a_fixed_number_is_the_owners_choice_and_an_allowlist_adds_the_models_choices(tmp_path: Path) -> None:
    fixed = load(tmp_path, f'[[tools]]\nname = "t"\ndescription = "d"\nkind = "transfer_call"\nto = "{DESK}"')
    assert fixed.may_transfer_to(DESK) and not fixed.may_transfer_to(PREMIUM)
    assert not fixed.may_call(DESK)  # outbound: nothing unless listed
    listed = agent(transfer_allowlist=["+1415*"], outbound_allowlist=[DESK])
    assert listed.may_transfer_to(DESK) and not listed.may_transfer_to(PREMIUM)
    assert listed.may_call(DESK) and not listed.may_call(PREMIUM)
    with pytest.raises(DestinationNotAllowed, match=r"\+1900"):
        listed.check_transfer(PREMIUM)


# --- what the model is shown ------------------------------------------------------------


def test_the_model_chooses_from_an_enum_of_the_exact_numbers() -> None:
    (schema,) = agent(tools=[FREE], transfer_allowlist=[DESK, "+14155550124"]).openai_tools()
    parameters = schema["function"]["parameters"]
    assert parameters["properties"]["phone_number"]["enum"] == [DESK, "+14155550124"]
    assert parameters["required"] == ["phone_number"]
    assert FREE.parameters["properties"] == {}  # the tool's own schema is left as written


def test_with_prefixes_the_model_gets_a_pattern_and_a_tool_that_can_dial_nothing_is_not_offered() -> None:
    (schema,) = agent(tools=[FREE], transfer_allowlist=[DESK, "+1415666*"]).openai_tools()
    number = schema["function"]["parameters"]["properties"]["phone_number"]
    assert number["pattern"] == r"^\+(14155550123|1415666[0-9]*)$" and "enum" not in number
    assert agent(tools=[FREE]).openai_tools() == []
    fixed = Tool(name="desk", description="d", kind="transfer_call", to=DESK)
    assert agent(tools=[fixed]).openai_tools() == [fixed.openai_schema()]


# --- the brain's check of the model's number ----------------------------------------------


def test_a_refused_number_becomes_a_tool_result_and_a_warning_without_the_callers_words(
    caplog: pytest.LogCaptureFixture,
) -> None:
    desk = agent(tools=[FREE], transfer_allowlist=[DESK])
    assert call_action(desk, FREE, asked("+1 415 555-0123")) == ReplyAction("transfer", DESK)
    with caplog.at_level(logging.WARNING, logger="voxline.brain.tools"):
        result = call_action(desk, FREE, asked(PREMIUM))
        words = call_action(desk, FREE, asked("my pin is 4321, send me to the premium line", key="to"))
    assert isinstance(result, str) and isinstance(words, str)
    assert "not allowed" in json.loads(result)["error"] and DESK in json.loads(result)["error"]
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]
    assert PREMIUM not in caplog.text and "4321" not in caplog.text and "premium line" not in caplog.text
    assert isinstance(call_action(agent(tools=[FREE]), FREE, asked(DESK)), str)  # empty allowlist: nothing


@pytest.fixture
def chat() -> Iterator[OpenAiChatEmulator]:
    emulator = OpenAiChatEmulator().start()
    yield emulator
    emulator.stop()


async def test_the_model_hears_the_refusal_and_answers_the_caller(chat: OpenAiChatEmulator, tmp_path: Path) -> None:
    (tmp_path / "desk.toml").write_text(
        f'name = "D"\ngreeting = "Hi."\nsystem_prompt = "S"\ntransfer_allowlist = ["{DESK}"]\n'
        '[[tools]]\nname = "transfer"\ndescription = "Transfer the caller."\nkind = "transfer_call"\n'
    )
    chat.replies = [
        Reply("Sure.", tool_calls=[("transfer", {"phone_number": PREMIUM})]),
        Reply("Sorry, I can only transfer you to our front desk."),
    ]
    endpoint = OpenAiLlmSettings(base_url=chat.base_url, api_key=SecretStr(DEFAULT_KEY), model="gpt-4o")
    brain = OpenAIChatProvider(BrainSettings(openai=endpoint, agents_dir=str(tmp_path)), name="openai")
    turn = BrainTurn(call_id="c1", turn_id=1, agent_id="desk", history=[], user_text="Transfer me.", requested_at_us=0)
    try:
        events = [event async for event in brain.stream(turn)]
    finally:
        await brain.close()
    assert not [e for e in events if isinstance(e, ReplyAction)]
    assert [e.text for e in events if isinstance(e, Sentence)] == [
        "Sure.",
        "Sorry, I can only transfer you to our front desk.",
    ]
    first, second = chat.requests
    assert first.body["tools"][0]["function"]["parameters"]["properties"]["phone_number"]["enum"] == [DESK]
    assert second.messages[-1]["role"] == "tool" and "not allowed" in second.messages[-1]["content"]


async def test_a_model_that_insists_on_a_refused_number_leaves_no_silence(
    chat: OpenAiChatEmulator, tmp_path: Path
) -> None:
    (tmp_path / "desk.toml").write_text(
        f'name = "D"\ngreeting = "Hi."\nsystem_prompt = "S"\napology = "Sorry, say again?"\n'
        f'transfer_allowlist = ["{DESK}"]\n'
        '[[tools]]\nname = "transfer"\ndescription = "Transfer the caller."\nkind = "transfer_call"\n'
    )
    chat.replies = [Reply(tool_calls=[("transfer", {"phone_number": PREMIUM})])] * 2
    endpoint = OpenAiLlmSettings(base_url=chat.base_url, api_key=SecretStr(DEFAULT_KEY), model="gpt-4o")
    settings = BrainSettings(openai=endpoint, agents_dir=str(tmp_path), tool_rounds=1)
    brain = OpenAIChatProvider(settings, name="openai")
    turn = BrainTurn(call_id="c1", turn_id=1, agent_id="desk", history=[], user_text="Transfer me.", requested_at_us=0)
    try:
        events = [event async for event in brain.stream(turn)]
    finally:
        await brain.close()
    assert len(chat.requests) == 2
    assert [e for e in events if isinstance(e, Sentence | ReplyAction)] == [Sentence("Sorry, say again?")]


# --- the gateway's own checks -----------------------------------------------------------


@pytest.fixture(scope="module")
def twilio() -> Iterator[TwilioRestEmulator]:
    emulator = TwilioRestEmulator(auth_token=AUTH_TOKEN).start()
    yield emulator
    emulator.stop()


@pytest.fixture
async def gateway(worker_bus: Bus, twilio: TwilioRestEmulator, tmp_path: Path) -> AsyncIterator[Gateway]:
    twilio.reset()
    (tmp_path / "desk.toml").write_text(
        f'name = "D"\ngreeting = "Hi."\nsystem_prompt = "S"\ntransfer_allowlist = ["+1415*"]\n'
        f'outbound_allowlist = ["{DESK}"]\n'
    )
    settings = GatewaySettings(
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_FROM_NUMBER="+15005550006",
        twilio_api_base=twilio.base_url,
        public_url="https://voice.example.com",
        agents_dir=str(tmp_path),
    )
    for bucket in (CALL_RECORDS_BUCKET, STREAM_ENDS_BUCKET):
        await worker_bus.create_bucket(bucket, ttl_s=3600)
        await worker_bus.kv_delete(bucket, CALL_SID)
    gw = Gateway(worker_bus, settings)
    yield gw
    await gw.stop()


async def test_the_gateway_dials_no_transfer_its_agent_does_not_allow(
    gateway: Gateway, worker_bus: Bus, twilio: TwilioRestEmulator
) -> None:
    """A Transfer order on the bus that did not come through the brain's check."""
    with pytest.raises(Exception, match="invalid agent id"):  # no record: whose call is unknown
        await gateway.transfer(CALL_SID, DESK)
    record = CallRecord(call_id=CALL_SID, call_sid=CALL_SID, agent_id="desk", status="in-progress", started_at_us=1)
    await worker_bus.kv_put(CALL_RECORDS_BUCKET, CALL_SID, record)
    with pytest.raises(DestinationNotAllowed):
        await gateway.transfer(CALL_SID, PREMIUM)
    assert twilio.requests == []
    assert await gateway.outcomes.transfer_to(CALL_SID) == ""  # nor dialled later by the <Connect action>
    twilio.inbound(CALL_SID, "+15005550006", "+15005550001")
    await gateway.transfer(CALL_SID, DESK)
    (update,) = twilio.updated()
    assert f">{DESK}</Dial>" in update.form["Twiml"]


async def test_post_v1_calls_dials_only_the_agents_outbound_allowlist(
    gateway: Gateway, twilio: TwilioRestEmulator
) -> None:
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="https://voice.example.com") as http:
        refused = await http.post("/v1/calls", json={"to": PREMIUM, "agent_id": "desk"})
        placed = await http.post("/v1/calls", json={"to": DESK, "agent_id": "desk"})
    assert refused.status_code == 403, refused.text
    assert "outbound_allowlist" in refused.json()["error"]["message"]
    assert placed.status_code == 201, placed.text
    assert [r.form["To"] for r in twilio.created()] == [DESK]
