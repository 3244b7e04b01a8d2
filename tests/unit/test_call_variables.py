"""Per-call variables (voxline/agents/variables.py): `{{name}}` placeholders filled from the
agent's defaults, the call's variables and the built-ins; what the orchestrator speaks and
what the brain's prompt says with them; the stream parameter they travel in."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from proto.messages import BrainTurn, CallStart, Synthesize
from services.brain.prompt import PromptBuilder
from services.gateway.webhook import agent_says, connect_stream
from services.orchestrator.call import CallLimits, CallSnapshot, new_call
from tests.unit.orchestrator_driver import CALL_ID, T0, Driver
from voxline.agents import Agent, AgentStore, InvalidAgent
from voxline.agents.variables import (
    MAX_VALUE_CHARS,
    MAX_VARIABLES,
    InvalidVariables,
    call_values,
    checked,
    decode_parameter,
    encode_parameter,
    placeholders,
    render,
)
from voxline.calls_cli import show_record
from voxline.simulator.twilio_stream import parse_twiml


def test_placeholders_take_their_values_with_or_without_spaces() -> None:
    values = {"customer_name": "Ada", "appointment": "Tuesday 3pm"}
    text = "Hi {{customer_name}}, about {{ appointment }}: still good, {{customer_name}}?"
    assert render(text, values) == "Hi Ada, about Tuesday 3pm: still good, Ada?"
    assert placeholders(text) == ["customer_name", "appointment"]


def test_a_placeholder_without_a_value_is_empty_never_the_braces() -> None:
    assert render("Hello {{customer_name}}, welcome.", {}) == "Hello , welcome."
    assert "{{" not in render("{{a}}{{ b }}{{c_1}}", {"b": "B"}) == "B"


def test_values_are_inserted_as_written_never_expanded_again() -> None:
    """A value is caller data: `{{secret}}` in it stays as it is, one pass only."""
    values = {"name": "{{secret}} \\1 $0 {{name}}", "secret": "s3cr3t"}
    assert render("Hi {{name}}!", values) == "Hi {{secret}} \\1 $0 {{name}}!"


def test_text_that_is_not_a_placeholder_stays_as_written() -> None:
    text = 'JSON {"a": 1}, {single}, {{ 1 + 1 }}, {{not-a-key}}, a lone {{ here, }} there'
    assert render(text, {"single": "x"}) == text


def test_defaults_then_call_variables_then_built_ins() -> None:
    values = call_values({"customer_name": "there", "clinic": "Smile"}, {"customer_name": "Ada"}, {"call_id": "CA1"})
    assert values == {"customer_name": "Ada", "clinic": "Smile", "call_id": "CA1"}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([1, 2], "variables"),
        ({f"k{i}": "v" for i in range(MAX_VARIABLES + 1)}, "variables"),
        ({"first-name": "Ada"}, "variables.first-name"),
        ({"1st": "Ada"}, "variables.1st"),
        ({"x" * 65: "Ada"}, "variables." + "x" * 64),
        ({"name": "A" * (MAX_VALUE_CHARS + 1)}, "variables.name"),
        ({"name": None}, "variables.name"),
        ({"name": {"first": "Ada"}}, "variables.name"),
        ({"customer_number": "+15550100"}, "variables.customer_number"),  # a built-in
        ({"n": 10**5000}, "variables.n"),  # past str()'s digit limit: a 422, not a 500
    ],
)
def test_bad_variables_are_refused_naming_the_field(raw: object, field: str) -> None:
    with pytest.raises(InvalidVariables) as refused:
        checked(raw)
    assert refused.value.field == field


def test_numbers_and_booleans_become_text() -> None:
    limit = {f"k{i}": "v" * MAX_VALUE_CHARS for i in range(MAX_VARIABLES)}
    assert checked(limit) == limit
    assert checked({"n": 3, "price": 9.5, "vip": True, "no": False}) == {
        "n": "3",
        "price": "9.5",
        "vip": "true",
        "no": "false",
    }


def test_an_agents_default_variables_are_checked_naming_the_field(tmp_path: Path) -> None:
    store = AgentStore(tmp_path)
    doc = {"id": "a", "name": "A", "greeting": "Hi {{customer_name}}", "system_prompt": "p"}
    assert store.parse({**doc, "default_variables": {"customer_name": "there"}}, "a").default_variables
    with pytest.raises(InvalidAgent, match=r"^default_variables\.name: at most 500"):
        store.parse({**doc, "default_variables": {"name": "x" * 501}}, "a")


def test_the_stream_parameter_round_trips_and_garbage_is_no_variables() -> None:
    values = {"customer_name": 'Zoë "Z" <O\'Neil> & co', "appointment": "Tuesday 3pm"}
    assert decode_parameter(encode_parameter(values)) == values
    for garbage in ("", "not json", "[1]", '{"a-b": "x"}', '{"call_id": "x"}', "[" * 10_000):
        assert decode_parameter(garbage) == {}


def test_the_twiml_carries_the_variables_to_the_media_stream() -> None:
    """What Twilio gets back in the stream's start.customParameters (XML-escaped on the way)."""

    class Tokens:
        def issue(self, *args: str) -> str:
            return "token"

    values = {"customer_name": "Zoë & <Co>"}
    xml = connect_stream("https://vx.example", "CA1", "demo", {}, Tokens(), variables=values)  # type: ignore[arg-type]
    target = parse_twiml(xml)
    assert decode_parameter(target.parameters["variables"]) == values
    plain = parse_twiml(connect_stream("https://vx.example", "CA1", "demo", {}, Tokens()))  # type: ignore[arg-type]
    assert "variables" not in plain.parameters


def variable_call() -> Driver:
    d = Driver()
    agent = Agent(
        id="test",
        name="Test",
        greeting="Hello {{customer_name}}, this is {{clinic}} about {{appointment}}.",
        system_prompt="Call {{customer_name}} on {{customer_number}}.",
        goodbye="Bye {{customer_name}}.",
        default_variables={"customer_name": "there", "clinic": "Smile Dental"},
    )
    start = CallStart(
        call_id=CALL_ID,
        agent_id="test",
        stream_sid="MZ1",
        call_sid=CALL_ID,
        started_at_us=T0,
        direction="outbound",
        from_number="+15005550001",
        to_number="+15005550104",
        variables={"customer_name": "Ada", "appointment": "Tuesday 3pm"},
    )
    d.call = new_call(start, agent, CallLimits(), traceparent="")
    return d


def test_the_greeting_is_spoken_and_the_brain_asked_with_the_calls_values() -> None:
    d = variable_call()
    d.greet()
    assert [s.text for s in d.published(Synthesize)] == ["Hello Ada, this is Smile Dental about Tuesday 3pm.", ""]
    assert d.call.record.variables == {"customer_name": "Ada", "appointment": "Tuesday 3pm"}
    d.says("what time again")
    [request] = d.published(BrainTurn)
    assert request.variables == {
        "customer_name": "Ada",
        "clinic": "Smile Dental",
        "appointment": "Tuesday 3pm",
        "customer_number": "+15005550104",  # outbound: the callee
        "agent_number": "+15005550001",
        "call_id": CALL_ID,
        "direction": "outbound",
    }


def test_a_call_resumed_from_its_snapshot_keeps_its_variables() -> None:
    d = variable_call()
    snapshot = msgspec.json.decode(msgspec.json.encode(CallSnapshot(call=d.call)), type=CallSnapshot)
    assert snapshot.call.record.variables == {"customer_name": "Ada", "appointment": "Tuesday 3pm"}
    assert snapshot.call.variables() == d.call.variables()
    resumed = Driver()  # another orchestrator, going on from the snapshot
    resumed.call = snapshot.call
    resumed.greet()
    assert resumed.published(Synthesize)[0].text == "Hello Ada, this is Smile Dental about Tuesday 3pm."
    resumed.says("what time again")
    [request] = resumed.published(BrainTurn)
    assert request.variables["customer_name"] == "Ada" and request.variables["customer_number"] == "+15005550104"


def test_the_brains_system_prompt_has_the_values(tmp_path: Path) -> None:
    (tmp_path / "v.toml").write_text(
        'id = "v"\nname = "V"\ngreeting = "Hi"\n'
        'system_prompt = "You call {{customer_name}} about {{appointment}}{{missing}}."\n'
    )
    turn = BrainTurn(
        call_id="c",
        turn_id=1,
        agent_id="v",
        history=[],
        user_text="when?",
        requested_at_us=0,
        variables={"customer_name": "Ada", "appointment": "Tuesday 3pm"},
    )
    _, messages = PromptBuilder(AgentStore(tmp_path)).messages(turn)
    assert messages[0] == {"role": "system", "content": "You call Ada about Tuesday 3pm."}


def test_voxline_calls_get_shows_the_variables() -> None:
    lines = show_record({"call_id": "CA1", "variables": {"customer_name": "Ada", "appointment": "Tuesday 3pm"}})
    assert "variables customer_name=Ada, appointment=Tuesday 3pm" in lines
    assert not [line for line in show_record({"call_id": "CA1", "variables": {}}) if line.startswith("variables")]


def test_messages_twilio_reads_out_get_the_record_variables_defaults_and_built_ins() -> None:
    agent = Agent(
        id="a",
        name="A",
        greeting="",
        system_prompt="",
        default_variables={"customer_name": "there"},
        transfer_failed_message="Sorry {{customer_name}}, nobody is free. Call {{agent_number}}.{{unset}}",
    )
    params = {"CallSid": "CA1", "Direction": "inbound", "From": "+15005550006", "To": "+15005550001"}
    text = agent.transfer_failed_message
    assert agent_says(agent, text, params) == "Sorry there, nobody is free. Call +15005550001."
    assert agent_says(agent, text, params, {"customer_name": "Ada"}) == "Sorry Ada, nobody is free. Call +15005550001."
