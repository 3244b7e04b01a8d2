"""OpenAI's `POST /v1/chat/completions` (streaming) as a small aiohttp server.

Speaks the SSE wire format the SDK parses: `data: <chunk>` events, a first chunk with the
assistant role, content deltas token by token, tool calls streamed as OpenAI streams them
(per `index`: id, type and function name first, then the JSON arguments in pieces), a last
chunk with `finish_reason`, then `data: [DONE]`. Replies are scripted per request, with
the key check, latency (time to first token, tokens per second) and the failures the
brain must survive: an HTTP status, a stall, a cut connection. Every request is recorded,
including whether the client closed the stream before the end (barge-in).
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


@dataclass
class ChatRequest:
    body: dict[str, Any]
    status: int
    tokens_sent: int = 0
    completed: bool = False
    client_closed: bool = False  # the client went away before the last chunk

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
        if not body.get("stream") or not body.get("messages"):
            self.requests.append(ChatRequest(body, 400))
            return self._error(400, "this emulator answers stream=true requests with messages only")
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
        chunk_id, created, model = f"chatcmpl-{len(self.requests)}", int(time.time()), record.body.get("model", "")
        gap = 1 / self.tokens_per_s if self.tokens_per_s > 0 else 0.0

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_emulator",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if request.transport is None or request.transport.is_closing():
                raise ConnectionResetError("client closed the stream")
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        await send({"role": "assistant", "content": "" if reply.text else None, "refusal": None})
        for i, token in enumerate(re.findall(r"\s*\S+", reply.text)):
            if drop and record.tokens_sent >= self.drop_after_tokens:
                assert request.transport is not None
                request.transport.abort()
                return
            if i and gap:
                await asyncio.sleep(gap)
            await send({"content": token})
            record.tokens_sent += 1
        for index, (name, arguments) in enumerate(reply.tool_calls):
            call_id = f"call_{len(self.requests)}_{index}"
            await send({"tool_calls": [{"index": index, "id": call_id, "type": "function", "function": {
                "name": name, "arguments": ""}}]})  # fmt: skip
            text = json.dumps(arguments)
            for start in range(0, len(text), ARGUMENT_PIECE):
                piece = text[start : start + ARGUMENT_PIECE]
                await send({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                record.tokens_sent += 1
        await send({}, "tool_calls" if reply.tool_calls else "stop")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        record.completed = True
