"""OpenAI's `POST /v1/audio/speech` as a small aiohttp server: raw 24 kHz 16-bit PCM,
streamed chunked like the real API, with the key check, error bodies and failures our
TTS provider must survive (status per request, latency, stall, a cut connection).
`GET /v1/models` answers too, because the provider warms its connection with it.

Voices are checked per model, as OpenAI's guide lists them
(https://platform.openai.com/docs/guides/text-to-speech#voice-options): tts-1 and
tts-1-hd speak only alloy, ash, coral, echo, fable, onyx, nova, sage and shimmer;
gpt-4o-mini-tts also ballad, verse, marin and cedar. ASSUMPTION: another voice is refused
with HTTP 400, an invalid_request_error on `voice` (the wording of the live API's message
is not documented; users report a 400, e.g. https://github.com/anasfik/openai/issues/224).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from voxline.audio import tone_pcm16

RATE = 24_000
MS_PER_CHAR = 40
PIECE_BYTES = RATE * 2 // 10  # 100 ms of audio per chunk
DEFAULT_KEY = "sk-openai-test-5d21e8"
TTS1_VOICES = frozenset({"alloy", "ash", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer"})
GPT_VOICES = TTS1_VOICES | {"ballad", "verse", "marin", "cedar"}

_ERRORS = {
    401: ("invalid_request_error", "invalid_api_key"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


@dataclass
class SpeechRequest:
    body: dict[str, Any]
    status: int
    chunks_sent: int = 0
    completed: bool = False


class OpenAiSpeechEmulator:
    def __init__(self, api_key: str = DEFAULT_KEY) -> None:
        self.api_key = api_key
        self.ttfb_ms = 0.0
        self.failures: list[int] = []  # statuses for the next speech requests, consumed in order
        self.drop_after_chunks: int | None = None
        self.stall = False
        self.ms_per_char = MS_PER_CHAR
        self.requests: list[SpeechRequest] = []
        self.model_lists = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="openai-speech-emulator", daemon=True)
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> OpenAiSpeechEmulator:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def reset(self) -> None:
        self.ttfb_ms, self.failures, self.drop_after_chunks, self.stall = 0.0, [], None, False
        self.requests, self.model_lists, self.ms_per_char = [], 0, MS_PER_CHAR

    def _error(self, status: int, message: str, param: str | None = None) -> web.Response:
        kind, code = _ERRORS.get(status, ("invalid_request_error", None))
        body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
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
        return web.json_response({"object": "list", "data": [{"id": "gpt-4o-mini-tts", "object": "model"}]})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.failures:
            status = self.failures.pop(0)
            self.requests.append(SpeechRequest(body, status))
            return self._error(status, "injected failure")
        if (refused := self._key_error(request)) is not None:
            self.requests.append(SpeechRequest(body, 401))
            return refused
        if body.get("response_format") != "pcm" or not body.get("input"):
            self.requests.append(SpeechRequest(body, 400))
            return self._error(400, "this emulator streams response_format=pcm only")
        model = str(body.get("model", ""))
        voices = TTS1_VOICES if model.startswith("tts-1") else GPT_VOICES
        if body.get("voice") not in voices:
            self.requests.append(SpeechRequest(body, 400))
            known = ", ".join(sorted(voices))
            return self._error(400, f"Voice {body.get('voice')!r} is not supported by {model}: {known}.", "voice")
        record = SpeechRequest(body, 200)
        self.requests.append(record)
        if self.stall:
            await asyncio.Event().wait()  # until the client gives up
        await asyncio.sleep(self.ttfb_ms / 1000)
        response = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        audio = tone_pcm16(len(body["input"]) * self.ms_per_char, freq=230, rate=RATE).astype("<i2").tobytes()
        for offset in range(0, len(audio), PIECE_BYTES):
            if self.drop_after_chunks is not None and record.chunks_sent >= self.drop_after_chunks:
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(audio[offset : offset + PIECE_BYTES])
            record.chunks_sent += 1
            await asyncio.sleep(0.005)
        await response.write_eof()
        record.completed = True
        return response
