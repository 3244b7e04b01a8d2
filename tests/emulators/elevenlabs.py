"""An ElevenLabs stream-input WebSocket server, faithful enough for our provider's tests.

It speaks the documented protocol (first message `text: " "` with settings, text with
`flush`, `{"text": ""}` to end, audio as base64 JSON with `normalizedAlignment`,
`isFinal` last) and records every session, so tests can assert what went over the wire.
Audio is mu-law 8 kHz (the tests ask for `ulaw_8000`): a tone, `ms_per_char` per character.
Failures are injected per handshake (HTTP status), per stream (drop after N audio
messages, stall) and as latency (handshake, first audio after a flush).

A socket that receives nothing for `inactivity_timeout` seconds (a query parameter:
default 20, at most 180) is closed by the server
(https://elevenlabs.io/docs/api-reference/text-to-speech/v-1-text-to-speech-voice-id-stream-input,
https://elevenlabs.io/blog/websocket-improvements-reliability-and-custom-timeout). What
the server says then is not in the reference; ASSUMPTION: as users report it, an error
message `input_timeout_exceeded` (https://github.com/livekit/agents/issues/218), then a
1008 close whose reason is that text cut to the 123 bytes a close frame allows
(https://github.com/elevenlabs/elevenlabs-docs/issues/426). ASSUMPTION: a timeout above
180 is refused at the handshake with HTTP 400. `second` shortens a documented second so
a test can watch the 20 s default lapse.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from voxline.audio import TELEPHONY_RATE, pcm16_to_mulaw, tone_pcm16

MS_PER_CHAR = 40
PIECE_MS = 200
PIECE_INTERVAL_S = 0.01
DEFAULT_KEY = "el-test-key-7f3a9c"
DEFAULT_INACTIVITY_S = 20
MAX_INACTIVITY_S = 180
CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code


@dataclass
class Session:
    voice_id: str
    query: dict[str, str]
    key_in_header: bool
    messages: list[dict[str, Any]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # non-blank text messages, in order
    flushes: int = 0
    audio_messages: int = 0
    eos: bool = False  # the client sent {"text": ""}
    final_sent: bool = False
    client_closed_early: bool = False  # closed by the client before isFinal
    done: bool = False
    timed_out: bool = False  # closed by the server: nothing received for inactivity_timeout


def inactivity_timeout(path: str) -> int:
    values = parse_qs(urlsplit(path).query).get("inactivity_timeout")
    return int(values[-1]) if values else DEFAULT_INACTIVITY_S


class ElevenLabsEmulator:
    def __init__(self, api_key: str = DEFAULT_KEY) -> None:
        self.api_key = api_key
        self.ttfb_ms = 0.0
        self.handshake_ms = 0.0
        self.handshake_failures: list[int] = []  # statuses for the next handshakes, consumed in order
        self.drop_after_audio: int | None = None  # abort the TCP connection after N audio messages
        self.stall = False  # accept text, never answer
        self.realtime = False  # pace audio at real time (barge-in tests need synthesis in flight)
        self.ms_per_char = MS_PER_CHAR
        self.second = 1.0  # how long one documented second of inactivity_timeout lasts here
        self.sessions: list[Session] = []
        self.handshakes: list[int] = []  # status of every handshake answered
        self._loop = asyncio.new_event_loop()
        self._server: Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="elevenlabs-emulator", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> ElevenLabsEmulator:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await serve(self._handle, "127.0.0.1", 0, process_request=self._check)
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._server.wait_closed(), 2)
            # Handlers of clients that vanished without closing: cut them rather than wait.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def reset(self) -> None:
        self.ttfb_ms = self.handshake_ms = 0.0
        self.handshake_failures, self.drop_after_audio, self.stall, self.realtime = [], None, False, False
        self.sessions, self.handshakes, self.ms_per_char, self.second = [], [], MS_PER_CHAR, 1.0

    def text_sessions(self) -> list[Session]:
        """Sessions that carried text (warm sockets never used are left out)."""
        return [s for s in self.sessions if s.texts]

    async def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.handshake_ms:
            await asyncio.sleep(self.handshake_ms / 1000)
        path = urlsplit(request.path).path
        parts = path.strip("/").split("/")
        if len(parts) != 4 or parts[:2] != ["v1", "text-to-speech"] or parts[3] != "stream-input":
            return self._refuse(connection, HTTPStatus.NOT_FOUND, "unknown path")
        if self.handshake_failures:
            status = self.handshake_failures.pop(0)
            return self._refuse(connection, HTTPStatus(status), json.dumps({"detail": {"status": "injected"}}))
        if inactivity_timeout(request.path) > MAX_INACTIVITY_S:
            body = {"detail": {"status": "invalid_request", "message": "inactivity_timeout can be at most 180"}}
            return self._refuse(connection, HTTPStatus.BAD_REQUEST, json.dumps(body))
        key = request.headers.get("xi-api-key")
        if key is not None and key != self.api_key:
            body = {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}
            return self._refuse(connection, HTTPStatus.UNAUTHORIZED, json.dumps(body))
        self.handshakes.append(101)
        return None

    def _refuse(self, connection: ServerConnection, status: HTTPStatus, body: str) -> Response:
        self.handshakes.append(int(status))
        response = connection.respond(status, body)
        response.headers = Headers({**dict(response.headers), "Content-Type": "application/json"})
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        split = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        session = Session(split.path.split("/")[3], query, "xi-api-key" in request.headers)
        self.sessions.append(session)
        buffer = ""
        idle_s = inactivity_timeout(request.path) * self.second
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(ws.recv(), idle_s)
                except TimeoutError:
                    await self._time_out(ws, session)
                    return
                message = json.loads(raw)
                session.messages.append(message)
                text = message.get("text")
                if len(session.messages) == 1:
                    if text != " " or not self._authorised(session, message):
                        await ws.close(1008, "Invalid API key or first message must be a single space")
                        return
                    continue
                if text == "":
                    session.eos = True
                    await self._speak(ws, session, buffer)
                    await ws.send(json.dumps({"isFinal": True}))
                    session.final_sent = True
                    await ws.close()
                    return
                if text is None:
                    continue
                if text.strip():
                    session.texts.append(text)
                buffer += text
                if message.get("flush"):
                    session.flushes += 1
                    await self._speak(ws, session, buffer)
                    buffer = ""
        except ConnectionClosed:
            pass
        finally:
            session.client_closed_early = not session.final_sent
            session.done = True

    async def _time_out(self, ws: ServerConnection, session: Session) -> None:
        seconds = float(session.query.get("inactivity_timeout", DEFAULT_INACTIVITY_S))
        text = f"Have not received a new text input within the timeout of {seconds} seconds. Streaming input "
        text += "terminated. Please make sure to either feed the input in the timely manner, or to send the end "
        text += 'of input text (empty string "") when done.'
        session.timed_out = True
        await ws.send(json.dumps({"message": text, "error": "input_timeout_exceeded", "code": 1008}))
        await ws.close(1008, text.encode()[:CLOSE_REASON_BYTES].decode(errors="ignore"))

    def _authorised(self, session: Session, first: dict[str, Any]) -> bool:
        return session.key_in_header or first.get("xi_api_key") == self.api_key

    async def _speak(self, ws: ServerConnection, session: Session, text: str) -> None:
        if not text.strip():
            return
        if self.stall:
            await ws.wait_closed()  # until the client gives up and closes
        await asyncio.sleep(self.ttfb_ms / 1000)
        audio = pcm16_to_mulaw(tone_pcm16(len(text.strip()) * self.ms_per_char, freq=210))
        piece = TELEPHONY_RATE * PIECE_MS // 1000
        for offset in range(0, len(audio), piece):
            if self.drop_after_audio is not None and session.audio_messages >= self.drop_after_audio:
                ws.transport.abort()
                await ws.wait_closed()
            chunk = audio[offset : offset + piece]
            message: dict[str, Any] = {"audio": base64.b64encode(chunk).decode(), "isFinal": None}
            if offset == 0:  # alignment of the whole text on the first message, evenly spaced
                chars = list(text.strip())
                message["normalizedAlignment"] = {
                    "chars": chars,
                    "charStartTimesMs": [i * self.ms_per_char for i in range(len(chars))],
                    "charDurationsMs": [self.ms_per_char] * len(chars),
                }
            await ws.send(json.dumps(message))
            session.audio_messages += 1
            await asyncio.sleep(PIECE_MS / 1000 if self.realtime else PIECE_INTERVAL_S)
