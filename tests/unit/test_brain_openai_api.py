"""The OpenAI brain against the chat-completions emulator as OpenAI documents the API:
reasoning models (max_completion_tokens, no temperature), finish_reason "length" on a
reply cut at the token cap, and the usage chunk of stream_options.include_usage. Driven
through the official SDK over a real socket, one provider per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from proto.messages import BrainTurn
from services.brain.providers import BrainEvent, FirstToken, ReplyAction, Sentence
from services.brain.providers.openai_chat import REASONING_TOKENS, OpenAIChatProvider, is_reasoning_model
from services.providers import ProviderError
from tests.emulators.openai_chat import DEFAULT_KEY, OpenAiChatEmulator, Reply
from voxline.config import BrainSettings, OpenAiLlmSettings

FRONT_DESK = "+15550100123"
AGENT = f"""
name = "Desk"
greeting = "Hello."
system_prompt = "You are the receptionist of a test clinic."

[[tools]]
name = "transfer_to_human"
description = "Transfer the caller to the front desk."
kind = "transfer_call"
to = "{FRONT_DESK}"
parameters = {{ type = "object", properties = {{ reason = {{ type = "string" }} }} }}
"""


@pytest.fixture
def chat() -> Iterator[OpenAiChatEmulator]:
    emulator = OpenAiChatEmulator().start()
    yield emulator
    emulator.stop()


@pytest.fixture
def agents(tmp_path: Path) -> Path:
    (tmp_path / "desk.toml").write_text(AGENT)
    return tmp_path


def brain(chat: OpenAiChatEmulator, model: str = "gpt-4o", **settings: object) -> OpenAIChatProvider:
    endpoint = OpenAiLlmSettings(base_url=chat.base_url, api_key=SecretStr(DEFAULT_KEY), model=model)
    return OpenAIChatProvider(BrainSettings(openai=endpoint, **settings), name="openai")  # type: ignore[arg-type]


def turn(agent_id: str = "demo", user_text: str = "When are you open?") -> BrainTurn:
    return BrainTurn(call_id="c1", turn_id=1, agent_id=agent_id, history=[], user_text=user_text, requested_at_us=0)


async def reply(provider: OpenAIChatProvider, agent_id: str = "demo") -> list[BrainEvent]:
    try:
        return [event async for event in provider.stream(turn(agent_id))]
    finally:
        await provider.close()


def spoken(events: list[BrainEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, Sentence)]


def tokens(model: str, kind: str) -> float:
    return REGISTRY.get_sample_value("voxline_brain_tokens_total", {"model": model, "kind": kind}) or 0.0


# --- reasoning models -----------------------------------------------------------------


def test_reasoning_models_are_known_by_name_or_by_setting() -> None:
    for model in ("o1", "o3-mini", "o4-mini-2025-04-16", "gpt-5", "gpt-5.2-chat-latest", "openai/gpt-5-mini"):
        assert is_reasoning_model(model), model
    for model in ("gpt-4o", "gpt-4.1-mini", "llama-3.3-70b-versatile", "omni-moderation-latest"):
        assert not is_reasoning_model(model), model
    assert is_reasoning_model("prod-deployment", "yes") and not is_reasoning_model("o3", "no")


async def test_emulated_reasoning_model_refuses_max_tokens_and_a_custom_temperature(
    chat: OpenAiChatEmulator,
) -> None:
    """What the live API answers, so the provider is tested against it."""
    base = {"model": "o4-mini", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    headers = {"Authorization": f"Bearer {DEFAULT_KEY}"}
    async with httpx.AsyncClient(base_url=chat.base_url, headers=headers) as client:
        old_cap = await client.post("/chat/completions", json={**base, "max_tokens": 80})
        temperature = await client.post("/chat/completions", json={**base, "temperature": 0.2})
        accepted = await client.post("/chat/completions", json={**base, "max_completion_tokens": 80})
    assert old_cap.status_code == temperature.status_code == 400
    assert old_cap.json()["error"]["param"] == "max_tokens"
    assert "Use 'max_completion_tokens' instead" in old_cap.json()["error"]["message"]
    assert temperature.json()["error"]["code"] == "unsupported_value"
    assert accepted.status_code == 200


async def test_a_reasoning_model_answers_with_room_to_think_and_no_temperature(chat: OpenAiChatEmulator) -> None:
    chat.replies = [Reply("We are open from eight to six.", reasoning_tokens=300)]
    events = await reply(brain(chat, "o4-mini"))
    assert spoken(events) == ["We are open from eight to six."]
    (request,) = chat.requests
    assert request.status == 200 and request.finish_reason == "stop"
    assert "max_tokens" not in request.body and "temperature" not in request.body
    # 300 tokens of reasoning would have used up the 80 of a spoken reply: finish_reason length.
    assert request.body["max_completion_tokens"] == BrainSettings().llm_max_tokens + REASONING_TOKENS


async def test_a_classic_model_gets_max_completion_tokens_and_its_temperature(chat: OpenAiChatEmulator) -> None:
    chat.replies = [Reply("We are open from eight to six.")]
    await reply(brain(chat, "gpt-4o", llm_temperature=0.3, llm_max_tokens=60))
    body = chat.requests[0].body
    assert body["max_completion_tokens"] == 60 and body["temperature"] == 0.3 and "max_tokens" not in body


# --- finish_reason --------------------------------------------------------------------


async def test_a_tool_call_cut_off_at_the_cap_is_not_run_and_what_was_said_stands(
    chat: OpenAiChatEmulator, agents: Path
) -> None:
    # Arguments longer than the tool-round cap: the stream ends in the middle of them.
    chat.replies = [Reply("Let me connect you.", tool_calls=[("transfer_to_human", {"reason": "x" * 3000})])]
    events = await reply(brain(chat, agents_dir=str(agents)), "desk")
    assert chat.requests[0].finish_reason == "length"
    assert spoken(events) == ["Let me connect you."]
    assert not [e for e in events if isinstance(e, ReplyAction)]
    assert len(chat.requests) == 1  # no tool result went back for another round


async def test_a_complete_tool_call_is_still_run(chat: OpenAiChatEmulator, agents: Path) -> None:
    chat.replies = [Reply("Let me connect you.", tool_calls=[("transfer_to_human", {"reason": "billing"})])]
    events = await reply(brain(chat, agents_dir=str(agents)), "desk")
    assert chat.requests[0].finish_reason == "tool_calls"
    assert events[-1] == ReplyAction("transfer", FRONT_DESK)


async def test_a_sentence_cut_off_at_the_cap_is_not_spoken(chat: OpenAiChatEmulator) -> None:
    chat.replies = [Reply("We open at nine. On Saturday we close at one in the afternoon, and on Sunday")]
    events = await reply(brain(chat, llm_max_tokens=10))
    assert chat.requests[0].finish_reason == "length"
    assert spoken(events) == ["We open at nine."]


async def test_a_reply_cut_off_before_any_sentence_fails_the_turn(chat: OpenAiChatEmulator) -> None:
    chat.replies = [Reply("We are open every weekday from eight in the morning.")]
    provider = brain(chat, llm_max_tokens=4)
    with pytest.raises(ProviderError) as failure:
        await reply(provider)
    assert failure.value.kind == "bad_request" and "finish_reason length" in str(failure.value)
    assert chat.requests[0].finish_reason == "length"


# --- usage ----------------------------------------------------------------------------


async def test_the_tokens_the_endpoint_reports_are_counted_by_model_and_kind(chat: OpenAiChatEmulator) -> None:
    model = "o3-mini"  # a model no other test counts for
    before = {kind: tokens(model, kind) for kind in ("prompt", "completion", "reasoning")}
    chat.replies = [Reply("We open at nine.", reasoning_tokens=40)]
    events = await reply(brain(chat, model))
    assert isinstance(events[0], FirstToken)
    request = chat.requests[0]
    assert request.body["stream_options"] == {"include_usage": True}
    assert request.usage is not None
    assert tokens(model, "prompt") - before["prompt"] == request.usage["prompt_tokens"] > 0
    assert tokens(model, "completion") - before["completion"] == request.usage["completion_tokens"] == 40 + 4
    assert tokens(model, "reasoning") - before["reasoning"] == 40
