"""The OpenAI-compatible brain's post-call analysis against the chat emulator, which answers
Structured Outputs as OpenAI documents them and refuses a schema strict mode would refuse:
one non-streamed completion with the strict schema, the answer checked, and every way it
goes wrong (JSON outside the schema, a refusal, an answer cut at the token cap, an HTTP
error) ending as a failed analysis with the reason. Official SDK, real socket."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from proto.messages import AnalysisField, AnalysisRequest, TranscriptLine
from services.brain.analysis import MAX_TOKENS, analyse, response_format
from services.brain.providers import make_provider
from services.brain.providers.openai_chat import REASONING_TOKENS, OpenAIChatProvider
from tests.emulators.openai_chat import DEFAULT_KEY, OpenAiChatEmulator, Refusal, schema_problem
from voxline.config import BrainSettings, OpenAiLlmSettings

FIELDS = {
    "callback_number": AnalysisField(type="string", description="The number to call back."),
    "wants_appointment": AnalysisField(type="boolean"),
    "topic": AnalysisField(type="string", enum=["prices", "other"]),
}
LINES = [
    TranscriptLine(speaker="agent", text="Bright Smile Dental, how can I help?", turn_id=1),
    TranscriptLine(speaker="caller", text="Please call me back on 555 0101 about a cleaning.", turn_id=2),
]


@pytest.fixture
def chat() -> Iterator[OpenAiChatEmulator]:
    emulator = OpenAiChatEmulator().start()
    yield emulator
    emulator.stop()


def settings(chat: OpenAiChatEmulator, model: str = "gpt-4o", key: str = DEFAULT_KEY) -> BrainSettings:
    endpoint = OpenAiLlmSettings(base_url=chat.base_url, api_key=SecretStr(key), model=model)
    return BrainSettings(openai=endpoint, brain_provider="openai", knowledge_embedder="none")  # type: ignore[call-arg]


def brain(chat: OpenAiChatEmulator, model: str = "gpt-4o", key: str = DEFAULT_KEY) -> OpenAIChatProvider:
    return OpenAIChatProvider(settings(chat, model, key), name="openai")


def request(**kw: object) -> AnalysisRequest:
    base: dict[str, object] = {"timeout_ms": 5000, **kw}
    return AnalysisRequest(call_id="CA1", agent_id="demo", lines=LINES, fields=FIELDS, requested_at_us=1, **base)  # type: ignore[arg-type]


async def test_one_structured_completion_with_the_strict_schema_gives_the_fields(chat: OpenAiChatEmulator) -> None:
    chat.structured_answers = [
        {"summary": "Wants a call back.", "callback_number": "5550101", "wants_appointment": True, "topic": "other"}
    ]
    result = await brain(chat).analyse(request(instructions="A dental clinic."))
    assert result.status == "done", result.error
    assert result.summary == "Wants a call back." and result.provider == "openai" and result.model == "gpt-4o"
    assert result.fields == {"callback_number": "5550101", "wants_appointment": True, "topic": "other"}
    assert result.usage is not None and result.usage.completion_tokens > 0
    assert not chat.requests, "no streamed request: the turns' list is untouched"
    (sent,) = chat.structured
    assert sent.status == 200 and "stream" not in sent.body
    assert sent.body["response_format"] == response_format(request())
    assert sent.body["temperature"] == 0.0 and sent.body["max_completion_tokens"] == MAX_TOKENS
    assert sent.messages[1]["content"].endswith(
        "Agent: Bright Smile Dental, how can I help?\nCaller: Please call me back on 555 0101 about a cleaning."
    )
    assert "A dental clinic." in sent.messages[0]["content"]


async def test_the_emulators_own_answer_follows_the_schema(chat: OpenAiChatEmulator) -> None:
    result = await brain(chat).analyse(request())
    assert result.status == "done", result.error
    assert result.fields == {
        "callback_number": "emulated callback_number",
        "wants_appointment": True,
        "topic": "prices",
    }


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ('{"summary": "x", "callback_number": null', "the answer is not JSON"),
        (
            {"summary": "x", "callback_number": None, "wants_appointment": "yes", "topic": None},
            "field 'wants_appointment' is not a boolean",
        ),
        (
            {"summary": "x", "callback_number": None, "wants_appointment": None, "topic": None, "mood": "calm"},
            "key(s) the schema does not",
        ),
        ({"summary": "x", "callback_number": None, "wants_appointment": None, "topic": "weather"}, "enum"),
    ],
)
async def test_a_model_answer_outside_the_schema_fails_the_analysis_with_the_reason(
    chat: OpenAiChatEmulator, answer: dict[str, object] | str, why: str
) -> None:
    chat.structured_answers = [answer]
    result = await brain(chat).analyse(request())
    assert result.status == "failed" and result.error.startswith("the model's answer is outside the schema: ")
    assert why in result.error


async def test_a_refusal_a_cut_off_answer_and_http_errors_fail_it_with_the_reason(chat: OpenAiChatEmulator) -> None:
    provider = brain(chat)
    chat.structured_answers = [Refusal("I can't help with that."), json.dumps({"summary": "y" * 4 * MAX_TOKENS})]
    refused = await provider.analyse(request())
    assert (refused.status, refused.error) == ("failed", "the model refused to answer")
    cut = await provider.analyse(request())
    assert (cut.status, cut.error) == ("failed", "the answer was cut off (finish_reason length)")
    chat.structured_failures = [500]
    assert (await provider.analyse(request())).error == "openai answered HTTP 500"
    wrong_key = await brain(chat, key="sk-wrong-key-000000").analyse(request())
    assert wrong_key.error == "openai answered HTTP 401" and "sk-" not in wrong_key.error


async def test_a_reasoning_model_gets_no_temperature_and_room_to_think(chat: OpenAiChatEmulator) -> None:
    result = await brain(chat, model="o4-mini").analyse(request())
    assert result.status == "done", result.error
    body = chat.structured[0].body
    assert "temperature" not in body and body["max_completion_tokens"] == MAX_TOKENS + REASONING_TOKENS


async def test_the_fallback_chain_the_worker_runs_analyses_too(chat: OpenAiChatEmulator) -> None:
    provider = make_provider("openai", settings(chat))
    result = await analyse(provider, request(summary=False))
    assert result.status == "done" and result.summary == ""
    assert "summary" not in chat.structured[0].body["response_format"]["json_schema"]["schema"]["properties"]
    chat.structured_failures = ["stall"]
    slow = await analyse(provider, request(timeout_ms=1200))
    assert (slow.status, slow.error) == ("failed", "the model took longer than 1200 ms")


def test_the_emulator_refuses_what_strict_mode_refuses() -> None:
    good = response_format(request())["json_schema"]
    assert schema_problem(good) == ""
    loose = {**good, "schema": {**good["schema"], "required": ["summary"]}}
    assert "Missing 'callback_number'" in schema_problem(loose)
    open_ended = {**good, "schema": {k: v for k, v in good["schema"].items() if k != "additionalProperties"}}
    assert "additionalProperties" in schema_problem(open_ended)
    assert "name" in schema_problem({**good, "name": "call analysis!"})
