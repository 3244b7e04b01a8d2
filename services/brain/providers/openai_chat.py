"""Any OpenAI-compatible chat endpoint: GPT-4o in the cloud (or Groq, vLLM, Azure's v1
API), llama-server on this machine.

One code path for both (the `openai` SDK with a base_url), so the offline stack exercises
exactly what production runs. What the model writes is reshaped into at most two
speakable sentences per round (see speakable.py); once the reply is full the HTTP stream
is closed, as it is when the turn is cancelled, so the model stops generating for nobody.

Tool calls: a webhook's result goes back to the model, which then streams the spoken
answer (a new round); transfer_call and end_call end the reply with a ReplyAction after
whatever was said, except a transfer to a number the agent does not allow, which goes
back to the model as an error like a failed webhook (tool_calls.py). send_dtmf goes back
to the model as sent (it may still say something) and ends the reply with the `dtmf`
action (tool_runner.py). Every call is reported (`ToolCalled`) for the call record.
Endpoint failures become ProviderError (the fallback chain retries or moves on); the message carries the
provider and HTTP status, never the body, because OpenAI echoes a masked key in its 401 body.

The request follows the current API reference
(https://platform.openai.com/docs/api-reference/chat/create): the token cap goes as
`max_completion_tokens` (`max_tokens` is deprecated and refused by reasoning models);
reasoning models (o1, o3, o4, gpt-5 families, or VOXLINE_OPENAI_REASONING) get no
temperature, which they refuse, and a cap with room for their hidden reasoning tokens,
which count against it. `stream_options.include_usage` makes the endpoint report the
tokens of each round, counted in voxline_brain_tokens_total and passed on as a `Usage`
event (the worker sums it into ReplyDone.usage, the call record's costs); a stream we close
early (the reply was full, or a barge-in) reports none, so both are a floor.

Every round's `finish_reason` is read: a reply cut off at the cap ("length", or
"content_filter") keeps its complete sentences but not an unfinished one, and its tool
calls are never run, since their arguments may be cut mid-JSON (a half phone number
is worse than none). A cut-off round that said nothing fails the turn (the caller hears
the apology) rather than leaving the line silent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import httpx2
import openai
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk, ChatCompletionStreamOptionsParam
from openai.types.completion_usage import CompletionUsage
from prometheus_client import Counter

from proto.messages import AnalysisRequest, AnalysisResult, BrainTurn, ChatTurn
from services.brain import analysis
from services.brain.prompt import PromptBuilder
from services.brain.providers.base import BrainEvent, FirstToken, ReplyAction, Sentence, ToolCalled, Usage
from services.brain.providers.tool_calls import ToolCallAccumulator
from services.brain.providers.tool_runner import run_tool
from services.brain.speakable import SpeakableReply
from services.openai_errors import openai_errors
from services.providers import ProviderError, kind_of_status
from voxline import tracing
from voxline.agents import Agent, shared_store
from voxline.agents.retrieval import make_embedder
from voxline.agents.variables import render
from voxline.config import BrainSettings
from voxline.telemetry import now_us

log = logging.getLogger("voxline.brain.openai_chat")

# The first request pre-fills the system prompt; the second, a typical question with a
# few tokens of answer, exercises the cached-prefix and decode paths the first turn takes.
WARMUP_REQUESTS = (("Hello.", 1), ("What are your opening hours?", 16))
WARMUP_RETRY_S = 30.0  # the endpoint may still be starting (the dev stack starts it first)
TOOL_MAX_TOKENS = 256  # tool arguments count as tokens; the reply cap would cut them off
# Reasoning tokens count against max_completion_tokens: without room for them a reasoning
# model spends the whole cap thinking and says nothing (finish_reason "length").
REASONING_TOKENS = 1024
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")  # OpenAI's reasoning model families
CUT_OFF = frozenset({"length", "content_filter"})  # the model was stopped, not done

TOKENS = Counter(
    "voxline_brain_tokens_total",
    "LLM tokens the endpoint reported (stream_options.include_usage), by model and kind: "
    "prompt, cached_prompt (part of prompt), completion, reasoning (part of completion).",
    ["model", "kind"],
)
TOKEN_KINDS = ("prompt", "cached_prompt", "completion", "reasoning")


def is_reasoning_model(model: str, setting: str = "auto") -> bool:
    """By VOXLINE_OPENAI_REASONING when set (an Azure deployment may be named anything),
    else by OpenAI's model name (a provider prefix like "openai/" is ignored)."""
    if setting != "auto":
        return setting == "yes"
    return model.rsplit("/", 1)[-1].lower().startswith(REASONING_PREFIXES)


def count_usage(model: str, usage: CompletionUsage) -> None:
    prompt_details, completion_details = usage.prompt_tokens_details, usage.completion_tokens_details
    counts = {
        "prompt": usage.prompt_tokens,
        "cached_prompt": (prompt_details.cached_tokens or 0) if prompt_details else 0,
        "completion": usage.completion_tokens,
        "reasoning": (completion_details.reasoning_tokens or 0) if completion_details else 0,
    }
    for kind, count in counts.items():
        TOKENS.labels(model=model, kind=kind).inc(count)
    tracing.add_event("llm usage", {f"tokens.{kind}": count for kind, count in counts.items()})


class OpenAIChatProvider:
    def __init__(self, settings: BrainSettings, name: str = "openai") -> None:
        self.name = name
        self.settings = settings
        self.agents = shared_store(settings.agents_dir)  # the one the worker starts on the bus
        embedder, budget_s = make_embedder(settings.knowledge_embedder), settings.knowledge_budget_ms / 1e3
        self.prompts = PromptBuilder(self.agents, settings.knowledge_top_k, embedder, budget_s)
        self.prompts.warm()
        self.local = name == "local"
        endpoint = settings.llm if self.local else settings.openai
        if self.local and not endpoint.base_url:
            raise ValueError("the local brain needs VOXLINE_LLM_BASE_URL (the dev stack sets it to its llama-server)")
        base_url, api_key = endpoint.base_url, endpoint.api_key.get_secret_value()
        self.model = endpoint.model
        reasoning_setting = "auto" if self.local else settings.openai.reasoning
        self.reasoning = is_reasoning_model(self.model, reasoning_setting)
        for kind in TOKEN_KINDS:  # every series from the start, at zero
            TOKENS.labels(model=self.model, kind=kind)
        # Local: a long prefill may pass between bytes. Cloud: a silence this long is a stall.
        wait = self.wait_s = endpoint.timeout_s
        # No SDK retries: the fallback chain owns retrying, bounded by what a caller waits.
        self.client = AsyncOpenAI(
            base_url=base_url or None,
            api_key=api_key or "missing-key",
            timeout=httpx2.Timeout(wait, connect=min(wait, 3.0)),
            max_retries=0,
            # Idle connections are kept a minute (not 5 s), so a quiet moment in a call
            # does not cost the next turn a TLS handshake.
            http_client=openai.DefaultAsyncHttpxClient(
                limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=60.0)
            ),
        )
        self.webhooks = httpx.AsyncClient()
        # llama-server keeps the KV of the longest common prefix (the agent's system
        # prompt), so a turn only pre-fills the new words; OpenAI rejects unknown fields.
        self._extra_body: dict[str, Any] = {"cache_prompt": True} if self.local else {}
        self._prefills: set[asyncio.Task[None]] = set()

    def messages(self, turn: BrainTurn) -> list[dict[str, Any]]:
        return self.prompts.messages(turn)[1]

    async def _create(self, messages: list[dict[str, Any]], agent: Agent) -> AsyncStream[ChatCompletionChunk]:
        extra: dict[str, Any] = {}
        if tools := agent.openai_tools():
            extra["tools"] = tools
        if not self.reasoning:  # reasoning models refuse any temperature but their default
            extra["temperature"] = self.settings.llm_temperature
        create = self.client.chat.completions.create
        return cast(
            AsyncStream[ChatCompletionChunk],
            await create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                stream_options=ChatCompletionStreamOptionsParam(include_usage=True),
                max_completion_tokens=self.token_cap(agent),
                extra_body=self._extra_body,
                **extra,
            ),
        )

    async def analyse(self, request: AnalysisRequest) -> AnalysisResult:
        """The post-call analysis: one non-streamed completion with a strict JSON schema
        (services/brain/analysis.py), at temperature 0 where the model takes one."""
        extra: dict[str, Any] = {"extra_body": self._extra_body, "temperature": 0.0}
        extra["max_completion_tokens"] = analysis.MAX_TOKENS + (REASONING_TOKENS if self.reasoning else 0)
        if self.reasoning:
            del extra["temperature"]
        chars = self.settings.analysis_transcript_chars
        return await analysis.openai_analysis(self.client, self.name, self.model, request, chars, extra)

    def token_cap(self, agent: Agent) -> int:
        cap = max(self.settings.llm_max_tokens, TOOL_MAX_TOKENS) if agent.tools else self.settings.llm_max_tokens
        return cap + REASONING_TOKENS if self.reasoning else cap

    async def stream(self, turn: BrainTurn) -> AsyncIterator[BrainEvent]:
        with openai_errors(self.name, f"no output for {self.wait_s}s"):
            async for piece in self._rounds(turn):
                yield piece

    async def _rounds(self, turn: BrainTurn) -> AsyncIterator[BrainEvent]:
        """One completion per round; a round that ends in webhook calls starts the next."""
        started = time.monotonic()
        if turn.agent_version:  # the version the call started with, read back if never seen here
            await self.agents.at(turn.agent_id, turn.agent_version)
        # In a thread: the query's embedding takes milliseconds that other calls' replies need the loop for.
        agent, messages = await asyncio.to_thread(self.prompts.messages, turn)
        tools = {tool.name: tool for tool in agent.tools}
        said: list[str] = []  # the sentences given out, in order
        dtmf = ""  # keys a send_dtmf call queued: pressed once the reply was heard
        for round_no in range(self.settings.tool_rounds + 1):
            reply, calls = SpeakableReply(), ToolCallAccumulator()
            text: list[str] = []
            finish: str | None = None
            response = await self._create(messages, agent)
            try:
                async for chunk in response:
                    if chunk.usage is not None:  # the last chunk, with choices []
                        count_usage(self.model, chunk.usage)
                        yield Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    if chunk.choices and chunk.choices[0].finish_reason:
                        finish = chunk.choices[0].finish_reason
                    delta = chunk.choices[0].delta if chunk.choices else None
                    if delta is None:
                        continue
                    if delta.tool_calls:
                        calls.add(delta.tool_calls)
                    if delta.content and not said and not text:
                        yield FirstToken(now_us())
                    if delta.content and not reply.full:
                        text.append(delta.content)
                        for sentence in reply.feed(delta.content):
                            said.append(sentence)
                            yield Sentence(sentence)
                    if reply.full and not tools:
                        break  # the rest would never be spoken; with tools a call may follow
                else:
                    # Cut off in its words (no tool call had begun), the tail is half a sentence.
                    if finish not in CUT_OFF or calls:
                        for sentence in reply.flush():
                            said.append(sentence)
                            yield Sentence(sentence)
            finally:
                # Also on cancellation (barge-in): closing the response ends the HTTP stream,
                # and the endpoint stops generating when its client goes away.
                await response.close()
            if finish in CUT_OFF:
                self._cut_off(finish, round_no, agent, said, calls, keys_queued=bool(dtmf))
                break
            if not calls:
                break
            log.info("round %d: tool calls %s", round_no, [c.name[:64] for c in calls.calls()])
            # Every call of the round on the one assistant message, each result after it.
            asked: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None, "tool_calls": []}
            messages.append(asked)
            for call in calls.calls():
                ran = await run_tool(self.webhooks, agent, tools.get(call.name), call, turn.call_id, dtmf)
                yield ToolCalled(ran.report)
                if ran.action is not None:
                    if not said and (say := tools[call.name].spoken_when_silent(render(agent.goodbye, turn.variables))):
                        yield Sentence(say)
                    yield ran.action
                    return
                dtmf = dtmf or ran.dtmf
                asked["tool_calls"].append(call.message())
                messages.append({"role": "tool", "tool_call_id": call.id, "content": ran.content})
        else:
            if not said and not dtmf:  # every round ended in tool calls (a model insisting on a refused number)
                log.warning("no words after %d rounds of tool calls: the apology is said", round_no + 1)
                said.append(agent.apology)
                yield Sentence(agent.apology)
        if dtmf:
            yield ReplyAction("dtmf", dtmf)
        log.info("reply of %d sentences in %.0f ms", len(said), (time.monotonic() - started) * 1000)
        if self.local and said:
            self._prefill_history([*messages, {"role": "assistant", "content": " ".join(said)}])

    def _cut_off(
        self,
        finish: str | None,
        round_no: int,
        agent: Agent,
        said: list[str],
        calls: ToolCallAccumulator,
        keys_queued: bool = False,
    ) -> None:
        """The model was stopped before it was done: what it said stands, what it was
        still writing (a sentence, a tool call's arguments) is dropped; with nothing said,
        the turn fails so the caller hears the apology instead of silence."""
        dropped = [call.name[:64] for call in calls.calls()]
        log.warning(
            "round %d of %s cut off (finish_reason %s, max_completion_tokens %d): %d sentences kept, "
            "tool calls not run: %s",
            round_no,
            self.model,
            finish,
            self.token_cap(agent),
            len(said),
            dropped or "none",
        )
        if not said and not keys_queued:  # keys a send_dtmf queued are the reply then
            raise ProviderError(self.name, "bad_request", f"reply cut off (finish_reason {finish}) before a sentence")

    def _prefill_history(self, messages: list[dict[str, Any]]) -> None:
        """Local only: while the reply plays and the caller answers, have llama-server
        pre-fill this exchange into its prompt cache, so the next turn pre-fills only the
        caller's new words (~6 ms a token on two cores: a few hundred ms saved a turn).
        The history the next turn sends is what the caller heard, which is this reply
        unless they interrupted it; the cache then still holds the common prefix."""

        async def prefill() -> None:
            try:
                await self.client.chat.completions.create(
                    model=self.model,
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=1,
                    temperature=0.0,
                    extra_body=self._extra_body,
                )
            except openai.APIError as exc:  # only a cache warm-up: the next turn works without it
                log.info("history pre-fill skipped: %s", type(exc).__name__)

        task = asyncio.create_task(prefill(), name="llm-prefill")
        self._prefills.add(task)
        task.add_done_callback(self._prefills.discard)

    async def load(self) -> None:
        """Warm the endpoint before the first caller: the cloud gets a models list (opens
        the TLS connection, checks the key); the local server pre-fills each warm-up
        agent's system prompt into its cache, which otherwise costs the first caller seconds."""
        if not self.local:
            try:
                await self.client.models.list()
                log.info("%s endpoint reachable (%s)", self.name, self.client.base_url)
            except openai.APIStatusError as exc:
                error = ProviderError(self.name, kind_of_status(exc.status_code), "warm-up refused", exc.status_code)
                log.warning("%s", error)
            except openai.APIError as exc:
                log.warning("%s warm-up failed: %s", self.name, type(exc).__name__)
            return
        for agent_id in [a.strip() for a in self.settings.llm.warmup_agents.split(",") if a.strip()]:
            started = time.monotonic()
            for user_text, max_tokens in WARMUP_REQUESTS:
                await self._warm(agent_id, user_text, max_tokens, started)
            log.info("llm warm-up (agent %s prompt cached) in %.0f ms", agent_id, (time.monotonic() - started) * 1000)

    async def _warm(self, agent_id: str, user_text: str, max_tokens: int, started: float) -> None:
        # Every call's first turn carries the greeting as history: cache it with the prompt.
        greeting = self.agents.get(agent_id).greeting
        history = [ChatTurn(role="assistant", content=greeting)] if greeting else []
        turn = BrainTurn(
            call_id="warmup", turn_id=0, agent_id=agent_id, history=history, user_text=user_text, requested_at_us=0
        )
        while True:
            try:
                await self.client.chat.completions.create(
                    model=self.model,
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
        for task in list(self._prefills):
            task.cancel()
        await self.client.close()
        await self.webhooks.aclose()


def local_llm(settings: BrainSettings) -> OpenAIChatProvider:
    """Brain 'local': the llama-server the dev stack runs."""
    return OpenAIChatProvider(settings, name="local")


def openai_llm(settings: BrainSettings) -> OpenAIChatProvider:
    """Brain 'openai': OpenAI or any OpenAI-compatible cloud endpoint."""
    return OpenAIChatProvider(settings, name="openai")
