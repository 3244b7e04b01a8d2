"""OpenAI's `POST /v1/chat/completions` (streaming) as a small aiohttp server.

Speaks the SSE wire format the SDK parses: `data: <chunk>` events, a first chunk with the
assistant role, content deltas token by token, tool calls streamed as OpenAI streams them
(per `index`: id, type and function name first, then the JSON arguments in pieces), a last
chunk with `finish_reason`, then `data: [DONE]`. Replies are scripted per request, with
the key check, latency (time to first token, tokens per second) and the failures the
brain must survive: an HTTP status, a stall, a cut connection. Every request is recorded,
including whether the client closed the stream before the end (barge-in).

What the API reference documents and the emulator therefore does
(https://platform.openai.com/docs/api-reference/chat/create):
- `max_completion_tokens` (or the deprecated `max_tokens`) caps the tokens generated, a
  reasoning model's hidden reasoning tokens included; a reply that reaches the cap is cut
  there and ends with `finish_reason: "length"`, even in the middle of a tool call's
  arguments (https://platform.openai.com/docs/api-reference/chat/streaming, choices[].finish_reason).
- `stream_options: {"include_usage": true}` adds one last chunk before `data: [DONE]` with
  `usage` for the whole request and `choices: []`; every other chunk then carries
  `"usage": null` (ibid., stream_options). A stream the client closes early gets none.
- Reasoning models (o1, o3, o4-mini, gpt-5...) refuse `max_tokens` ("not compatible with
  o-series models", ibid.) and any temperature but the default 1
  (https://platform.openai.com/docs/guides/reasoning). ASSUMPTION: the error bodies are
  the ones the live API returns, as quoted in public reports (e.g.
  https://github.com/teilomillet/gollm/issues/33, https://github.com/cline/cline/issues/341);
  the reference does not print them.
- Structured Outputs (https://platform.openai.com/docs/guides/structured-outputs, and
  `response_format` in the API reference): a non-streamed request whose `response_format` is
  `{"type": "json_schema", "json_schema": {"name", "strict", "schema"}}` gets a
  `chat.completion` whose `message.content` is JSON following the schema. With `strict: true`
  the guide's "supported schemas" rules are enforced as the API does, with a 400: the root is
  an object, `additionalProperties: false` on every object, every property listed in
  `required` (an optional value is a union with `null`); the name is a-z, A-Z, 0-9, `_` and
  `-`, at most 64. The answer is scripted (`structured_answers`: a dict, sent as JSON, a raw
  string, or a `Refusal`, whose text goes in `message.refusal` with `content` null), else
  built from the schema. These requests are kept in `structured`, apart from the streamed
  turns' `requests`, with their own `structured_failures`. ASSUMPTION: the 400 messages'
  wording (the guide names the rules, not the error text).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DEFAULT_KEY = "sk-chat-test-7c4e19"
GPT4O_TTFT_MS = 400.0  # published time to first token of GPT-4o, roughly
ARGUMENT_PIECE = 6  # characters of tool arguments per streamed delta
# ASSUMPTION: the model families OpenAI documents as reasoning models, by name prefix.
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")

_ERRORS = {
    401: ("invalid_request_error", "invalid_api_key"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


@dataclass
class Reply:
    """One scripted completion: text (spoken) and/or tool calls as (name, arguments)."""

    text: str = ""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    reasoning_tokens: int = 0  # hidden thinking of a reasoning model, counted against the cap first


@dataclass
class Refusal:
    """A scripted Structured Outputs refusal (`message.refusal`)."""

    text: str


@dataclass
class ChatRequest:
    body: dict[str, Any]
    status: int
    tokens_sent: int = 0
    completed: bool = False
    client_closed: bool = False  # the client went away before the last chunk
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None  # what the usage chunk reported, when one was sent

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))

    @property
    def system(self) -> str:
        return str(self.messages[0]["content"]) if self.messages else ""


def _last_user(body: dict[str, Any]) -> str:
    return next((str(m["content"]) for m in reversed(body.get("messages", [])) if m["role"] == "user"), "")


def _key(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def is_reasoning_model(model: str) -> bool:
    return model.startswith(REASONING_PREFIXES)


def prompt_tokens(body: dict[str, Any]) -> int:
    """ASSUMPTION: about four characters a token, as OpenAI's tokenizer guide estimates for English."""
    return max(1, len(json.dumps(body.get("messages", []))) // 4)


def default_reply(body: dict[str, Any]) -> Reply:
    said = _last_user(body)
    return Reply(f"You asked: {said.rstrip('.?!')}. We are happy to help with that.")


class OpenAiChatEmulator:
    def __init__(self, api_key: str = DEFAULT_KEY) -> None:
        self.api_key = api_key
        self.reset()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="openai-chat-emulator", daemon=True)
        self.port = 0

    def reset(self) -> None:
        self.ttft_ms = 0.0
        self.tokens_per_s = 0.0  # 0 = as fast as the socket goes
        self.replies: list[Reply] = []  # consumed in order; then default_reply
        # By the caller's last words (lower case, no punctuation), before `replies`: a
        # preemptive request that gets cancelled must not use up another turn's reply.
        self.answers: dict[str, Reply] = {}
        self.failures: list[int | str] = []  # per request, in order: an HTTP status, "stall" or "drop"
        self.drop_after_tokens = 2
        self.requests: list[ChatRequest] = []
        self.model_lists = 0
        # Non-streamed Structured Outputs requests (post-call analyses), kept apart.
        self.structured: list[ChatRequest] = []
        self.structured_answers: list[dict[str, Any] | str | Refusal] = []
        self.structured_failures: list[int | str] = []  # an HTTP status, or "stall"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> OpenAiChatEmulator:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        # Handlers still streaming at stop (a stalled request) are cut after a second.
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _error(self, status: int, message: str) -> web.Response:
        kind, code = _ERRORS.get(status, ("invalid_request_error", None))
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return web.json_response(body, status=status)

    def _key_error(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        if auth == f"Bearer {self.api_key}":
            return None
        given = auth.removeprefix("Bearer ")
        # Like the real API, the message echoes the key, masked: logs must never carry it.
        masked = f"{given[:3]}{'*' * 8}{given[-4:]}" if len(given) > 8 else "***"
        return self._error(401, f"Incorrect API key provided: {masked}.")

    def _unsupported(self, body: dict[str, Any]) -> web.Response | None:
        """What a reasoning model refuses (see the module docstring for the sources)."""
        if not is_reasoning_model(str(body.get("model", ""))):
            return None
        if body.get("max_tokens") is not None:
            message = "Unsupported parameter: 'max_tokens' is not supported with this model. "
            message += "Use 'max_completion_tokens' instead."
            return self._refuse(message, "max_tokens", "unsupported_parameter")
        temperature = body.get("temperature")
        if temperature is not None and temperature != 1:
            message = f"Unsupported value: 'temperature' does not support {temperature} with this model. "
            message += "Only the default (1) value is supported."
            return self._refuse(message, "temperature", "unsupported_value")
        return None

    def _refuse(self, message: str, param: str, code: str) -> web.Response:
        body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
        return web.json_response(body, status=400)

    async def _models(self, request: web.Request) -> web.Response:
        self.model_lists += 1
        if (refused := self._key_error(request)) is not None:
            return refused
        return web.json_response({"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        failure = self.failures.pop(0) if self.failures else None
        if isinstance(failure, int):
            self.requests.append(ChatRequest(body, failure))
            return self._error(failure, "injected failure")
        if (refused := self._key_error(request)) is not None:
            self.requests.append(ChatRequest(body, 401))
            return refused
        if not body.get("stream") and (body.get("response_format") or {}).get("type") == "json_schema":
            return await self._structured(request, body)
        if not body.get("stream") or not body.get("messages"):
            self.requests.append(ChatRequest(body, 400))
            return self._error(400, "this emulator answers stream=true requests with messages only")
        if (refused := self._unsupported(body)) is not None:
            self.requests.append(ChatRequest(body, 400))
            return refused
        record = ChatRequest(body, 200)
        self.requests.append(record)
        answers = {_key(words): reply for words, reply in self.answers.items()}
        reply = answers.get(_key(_last_user(body))) or (self.replies.pop(0) if self.replies else None)
        reply = reply or default_reply(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            if failure == "stall":
                await asyncio.Event().wait()  # headers out, then nothing; stop() cuts it
            await asyncio.sleep(self.ttft_ms / 1000)
            await self._stream(request, response, record, reply, failure == "drop")
        except (ConnectionResetError, ConnectionError):
            record.client_closed = True
        return response

    async def _stream(
        self, request: web.Request, response: web.StreamResponse, record: ChatRequest, reply: Reply, drop: bool
    ) -> None:
        body = record.body
        chunk_id, created, model = f"chatcmpl-{len(self.requests)}", int(time.time()), body.get("model", "")
        gap = 1 / self.tokens_per_s if self.tokens_per_s > 0 else 0.0
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        cap = body.get("max_completion_tokens", body.get("max_tokens"))
        reasoning = reply.reasoning_tokens if is_reasoning_model(model) else 0

        async def send(delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None) -> None:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            chunk: dict[str, Any] = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_emulator",
                "choices": choices,
            }
            if with_usage:
                chunk["usage"] = usage
            if request.transport is None or request.transport.is_closing():
                raise ConnectionResetError("client closed the stream")
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        await send({"role": "assistant", "content": "" if reply.text else None, "refusal": None})
        generated, cut = reasoning, False  # tokens counted against the cap; the reasoning comes first
        for i, (delta, tokens) in enumerate(_deltas(reply, len(self.requests))):
            if drop and record.tokens_sent >= self.drop_after_tokens:
                assert request.transport is not None
                request.transport.abort()
                return
            if tokens and cap is not None and generated >= cap:
                cut = True
                break
            if i and gap and "content" in delta:
                await asyncio.sleep(gap)
            await send(delta)
            record.tokens_sent += tokens
            generated += tokens
        record.finish_reason = "length" if cut else "tool_calls" if reply.tool_calls else "stop"
        await send({}, record.finish_reason)
        if with_usage:
            prompt = prompt_tokens(body)
            record.usage = {
                "prompt_tokens": prompt,
                "completion_tokens": generated,
                "total_tokens": prompt + generated,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0},
            }
            await send(None, usage=record.usage)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        record.completed = True

    async def _structured(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        failure = self.structured_failures.pop(0) if self.structured_failures else None
        record = ChatRequest(body, 200)
        self.structured.append(record)
        if isinstance(failure, int):
            record.status = failure
            return self._error(failure, "injected failure")
        if (refused := self._key_error(request)) is not None:
            record.status = 401
            return refused
        spec = body["response_format"].get("json_schema") or {}
        if problem := schema_problem(spec):
            record.status = 400
            return self._refuse(problem, "response_format", "invalid_json_schema")
        if failure == "stall":
            await asyncio.Event().wait()  # stop() cuts it
        scripted = self.structured_answers.pop(0) if self.structured_answers else None
        if scripted is None:
            scripted = answer_for(spec.get("schema") or {})
        refusal = scripted.text if isinstance(scripted, Refusal) else None
        content = None if refusal is not None else scripted if isinstance(scripted, str) else json.dumps(scripted)
        generated = max(1, len(content or refusal or "") // 4)
        cap = body.get("max_completion_tokens", body.get("max_tokens"))
        finish = "stop"
        if content is not None and cap is not None and generated > cap:
            content, generated, finish = content[: cap * 4], cap, "length"  # cut mid-JSON, as the API does
        record.finish_reason, record.completed, record.tokens_sent = finish, True, generated
        prompt = prompt_tokens(body)
        record.usage = {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}
        message = {"role": "assistant", "content": content, "refusal": refusal}
        return web.json_response(
            {
                "id": f"chatcmpl-s{len(self.structured)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", ""),
                "system_fingerprint": "fp_emulator",
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": record.usage,
            }
        )


_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def schema_problem(spec: dict[str, Any]) -> str:
    """Why the API refuses this `json_schema` (the guide's rules for strict mode), or ""."""
    name = spec.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        return "Invalid 'response_format.json_schema.name': must be a-z, A-Z, 0-9, underscores and dashes, at most 64."
    schema = spec.get("schema")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return f"Invalid schema for response_format '{name}': the root must be an object."
    if not spec.get("strict"):
        return ""
    return _strict_problem(name, schema, ())


def _strict_problem(name: str, schema: dict[str, Any], path: tuple[str, ...]) -> str:
    where = f"Invalid schema for response_format '{name}': In context={path}, "
    if schema.get("type") == "object" or "object" in (schema.get("type") or []):
        if schema.get("additionalProperties") is not False:
            return where + "'additionalProperties' is required to be supplied and to be false."
        properties = schema.get("properties") or {}
        missing = [key for key in properties if key not in (schema.get("required") or [])]
        if missing:
            required = "'required' is required to be supplied and to be an array including every key in properties."
            return where + f"{required} Missing '{missing[0]}'."
        for key, sub in properties.items():
            if isinstance(sub, dict) and (problem := _strict_problem(name, sub, (*path, "properties", key))):
                return problem
    return ""


def answer_for(schema: dict[str, Any]) -> dict[str, Any]:
    """What the emulated model writes when no answer is scripted: a value of each property's
    first type, the first enum value that is not null, "emulated <name>" for strings."""
    answer: dict[str, Any] = {}
    for key, sub in (schema.get("properties") or {}).items():
        kinds = sub.get("type") if isinstance(sub.get("type"), list) else [sub.get("type")]
        enum = [v for v in sub.get("enum") or [] if v is not None]
        kind = next((k for k in kinds if k != "null"), "null")
        answer[key] = (
            enum[0]
            if enum
            else {"string": f"emulated {key}", "boolean": True, "integer": 1, "number": 1.5, "null": None}.get(kind)
        )
    return answer


def _deltas(reply: Reply, request_no: int) -> list[tuple[dict[str, Any], int]]:
    """The reply as the deltas OpenAI streams, each with the tokens it costs: the text token
    by token, then each tool call as its header (id, name) and its arguments in pieces."""
    deltas: list[tuple[dict[str, Any], int]] = [({"content": t}, 1) for t in re.findall(r"\s*\S+", reply.text)]
    for index, (name, arguments) in enumerate(reply.tool_calls):
        header = {"index": index, "id": f"call_{request_no}_{index}", "type": "function"}
        deltas.append(({"tool_calls": [{**header, "function": {"name": name, "arguments": ""}}]}, 1))
        text = json.dumps(arguments)
        for start in range(0, len(text), ARGUMENT_PIECE):
            piece = {"index": index, "function": {"arguments": text[start : start + ARGUMENT_PIECE]}}
            deltas.append(({"tool_calls": [piece]}, 1))
    return deltas
