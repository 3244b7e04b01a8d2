"""The local brain's history pre-fill: after a reply, llama-server is asked to cache the
exchange so the next turn pre-fills only the caller's new words. Driven through the
official SDK against the chat-completions emulator on a real socket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from proto.messages import BrainTurn, ChatTurn
from services.brain.providers import FirstToken, Sentence, Usage
from services.brain.providers.openai_chat import OpenAIChatProvider
from tests.emulators.openai_chat import DEFAULT_KEY, OpenAiChatEmulator, Reply
from tests.integration.conftest import wait_until
from voxline.config import BrainSettings, LocalLlmSettings, OpenAiLlmSettings


@pytest.fixture
def chat() -> Iterator[OpenAiChatEmulator]:
    emulator = OpenAiChatEmulator().start()
    yield emulator
    emulator.stop()


def provider(chat: OpenAiChatEmulator, name: str) -> OpenAIChatProvider:
    key = SecretStr(DEFAULT_KEY)
    settings = BrainSettings(
        llm=LocalLlmSettings(base_url=chat.base_url, api_key=key),
        openai=OpenAiLlmSettings(base_url=chat.base_url, api_key=key),
    )
    return OpenAIChatProvider(settings, name=name)


TURN = BrainTurn(
    call_id="c1",
    turn_id=2,
    agent_id="demo",
    history=[ChatTurn(role="assistant", content="Hello, how can I help?")],
    user_text="When do you open on Saturday?",
    requested_at_us=0,
)


async def two_requests(chat: OpenAiChatEmulator) -> bool:
    return len(chat.requests) == 2


async def test_local_reply_is_followed_by_a_prefill_of_what_was_said(chat: OpenAiChatEmulator) -> None:
    chat.replies = [Reply("We open at 9 AM on Saturday. See you then!")]
    brain = provider(chat, "local")
    try:
        said = [piece async for piece in brain.stream(TURN)]
        await wait_until(lambda: two_requests(chat), 5, "the pre-fill request")
    finally:
        await brain.close()
    assert isinstance(said[0], FirstToken)
    # The model's token usage (cost drivers) comes with its last chunk, before the last
    # sentence is flushed at the end of the stream: what was said is the sentences.
    sentences = [piece for piece in said[1:] if not isinstance(piece, Usage)]
    assert sentences == [Sentence("We open at 9 a.m. on Saturday."), Sentence("See you then!")]
    turn, prefill = chat.requests
    assert turn.body["stream"] is True and prefill.body.get("max_tokens") == 1
    # The exchange exactly as the next turn's history will carry it: the spoken text.
    assert prefill.messages == [
        *turn.messages,
        {"role": "assistant", "content": "We open at 9 a.m. on Saturday. See you then!"},
    ]
    assert prefill.body.get("cache_prompt") is True


async def test_cloud_reply_sends_no_prefill(chat: OpenAiChatEmulator) -> None:
    chat.replies = [Reply("We open at nine on Saturday.")]
    brain = provider(chat, "openai")
    try:
        said = [piece async for piece in brain.stream(TURN)]
        # A second turn's request is the marker: if a pre-fill had been sent, it came first.
        chat.replies = [Reply("Yes.")]
        _ = [piece async for piece in brain.stream(TURN)]
    finally:
        await brain.close()
    assert said and [r.body["stream"] for r in chat.requests] == [True, True]
