"""Any OpenAI-compatible chat endpoint: GPT-4o in the cloud, llama-server on this machine.

One code path for both (the `openai` SDK with a base_url), so the offline stack exercises
exactly what production runs. What the model writes is reshaped into at most two
speakable sentences (see speakable.py); once the reply is full the HTTP stream is closed,
as it is when the turn is cancelled, so the model stops generating for nobody.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, cast

from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk

from proto.messages import BrainTurn
from services.brain.speakable import SpeakableReply
from voxline.agents import AgentStore
from voxline.config import BrainSettings

log = logging.getLogger("voxline.brain.openai_chat")

# The first request pre-fills the system prompt; the second, a typical question with a
# few tokens of answer, exercises the cached-prefix and decode paths the first turn takes.
WARMUP_REQUESTS = (("Hello.", 1), ("What are your opening hours?", 16))
WARMUP_RETRY_S = 30.0  # the endpoint may still be starting (the dev stack starts it first)


class OpenAIChatProvider:
    def __init__(self, settings: BrainSettings, name: str = "openai") -> None:
        self.name = name
        self.settings = settings
        self.agents = AgentStore(settings.agents_dir)
        if name == "local" and not settings.llm_base_url:
            raise ValueError("the local brain needs VOXLINE_LLM_BASE_URL (the dev stack sets it to its llama-server)")
        # No SDK retries: a retried request would answer long after the caller gave up;
        # the worker turns a failure into an apology instead.
        self.client = AsyncOpenAI(
            base_url=settings.llm_base_url or None,
            api_key=settings.llm_api_key,
            timeout=settings.llm_timeout_s,
            max_retries=0,
        )
        # llama-server keeps the KV of the longest common prefix (the agent's system
        # prompt), so a turn only pre-fills the new words; OpenAI rejects unknown fields.
        self._extra_body: dict[str, Any] = {"cache_prompt": True} if name == "local" else {}

    def messages(self, turn: BrainTurn) -> list[dict[str, str]]:
        """System prompt first and unchanged, so every turn of every call shares the cached prefix."""
        agent = self.agents.get(turn.agent_id)
        messages = [{"role": "system", "content": agent.system_prompt.strip()}]
        messages += [{"role": t.role, "content": t.content} for t in turn.history if t.role in ("user", "assistant")]
        messages.append({"role": "user", "content": turn.user_text})
        return messages

    async def stream(self, turn: BrainTurn) -> AsyncIterator[str]:
        started = time.monotonic()
        reply = SpeakableReply()
        create = self.client.chat.completions.create
        response = cast(
            AsyncStream[ChatCompletionChunk],
            await create(
                model=self.settings.llm_model,
                messages=self.messages(turn),  # type: ignore[arg-type]
                stream=True,
                temperature=self.settings.llm_temperature,
                max_tokens=self.settings.llm_max_tokens,
                extra_body=self._extra_body,
            ),
        )
        first_token_ms = 0.0
        try:
            async for chunk in response:
                delta = chunk.choices[0].delta.content if chunk.choices else None
                if not delta:
                    continue
                if not first_token_ms:
                    first_token_ms = (time.monotonic() - started) * 1000
                for sentence in reply.feed(delta):
                    yield sentence + " "  # the trailing space lets the worker cut at once
                if reply.full:
                    break
            else:
                for sentence in reply.flush():
                    yield sentence + " "
        finally:
            # Also on cancellation (barge-in): closing the response ends the HTTP stream,
            # and llama-server stops decoding when its client goes away.
            await response.close()
        log.info(
            "reply of %d sentences: first token %.0f ms, done %.0f ms",
            reply.count,
            first_token_ms,
            (time.monotonic() - started) * 1000,
        )

    async def load(self) -> None:
        """Pre-fill each warm-up agent's system prompt into the endpoint's prompt cache, so
        the first caller does not wait seconds for it; also opens the connection."""
        for agent_id in [a.strip() for a in self.settings.llm_warmup_agents.split(",") if a.strip()]:
            started = time.monotonic()
            for user_text, max_tokens in WARMUP_REQUESTS:
                await self._warm(agent_id, user_text, max_tokens, started)
            log.info("llm warm-up (agent %s prompt cached) in %.0f ms", agent_id, (time.monotonic() - started) * 1000)

    async def _warm(self, agent_id: str, user_text: str, max_tokens: int, started: float) -> None:
        turn = BrainTurn(
            call_id="warmup", turn_id=0, agent_id=agent_id, history=[], user_text=user_text, requested_at_us=0
        )
        while True:
            try:
                await self.client.chat.completions.create(
                    model=self.settings.llm_model,
                    messages=self.messages(turn),  # type: ignore[arg-type]
                    max_tokens=max_tokens,
                    temperature=0.0,
                    extra_body=self._extra_body,
                )
                return
            except Exception as exc:
                if time.monotonic() - started > WARMUP_RETRY_S:
                    raise RuntimeError(f"LLM endpoint {self.client.base_url} not usable: {exc}") from exc
                log.warning("LLM warm-up failed (%s); retrying", exc)
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        await self.client.close()
