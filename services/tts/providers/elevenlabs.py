"""ElevenLabs TTS over the stream-input WebSocket, asking for `ulaw_8000`: Twilio's own
format, so the audio goes to the caller untouched.

Why one socket per sentence, opened before it is needed: the worker synthesizes the
sentences of a reply concurrently, and on this endpoint a socket carries one stream of
audio with no marker of which flush it belongs to; only `isFinal`, after the closing
`{"text": ""}`, says a stream is complete. So a sentence takes a socket that is already
connected and initialised (a small pool per voice, refilled in the background), sends
its text with `flush`, closes the input and reads audio until `isFinal`. The handshake
is off the caller's time, the end of each sentence is exact, and a barge-in just closes
that socket.

The server closes a socket that received nothing for `inactivity_timeout` seconds: 20
unless the URL asks for more, at most 180
(https://elevenlabs.io/docs/api-reference/text-to-speech/v-1-text-to-speech-voice-id-stream-input,
https://elevenlabs.io/blog/websocket-improvements-reliability-and-custom-timeout). We ask
for VOXLINE_ELEVENLABS_INACTIVITY_TIMEOUT_S (180): the keeper replaces a warm socket
after two thirds of that less 10 s, and a socket within 10 s of the limit is never used.
At the default 20 s the whole pool was rebuilt every 10 s for nothing.

Multi-context (`/multi-stream-input`, `context_id`, `close_context`;
https://elevenlabs.io/docs/eleven-api/guides/how-to/websockets/multi-context-web-socket),
evaluated and not adopted. It would carry a reply's sentences as contexts of one socket,
its audio tagged with `contextId`, and a barge-in would send `close_context` instead of
closing a socket. What it would buy us is small: the handshake is already off the
caller's time (warm sockets), and closing a per-sentence socket already ends that
generation (ASSUMPTION: the server stops generating for a closed socket as it does for a
closed context; neither page says how fast). What it would cost: the guide wants one socket per caller session,
but `synthesize(text, voice)` serves sentences of many calls with no session in sight
(the interface and the worker would change); all of a call's sentences would share one
socket, so one drop or one server close fails them together instead of one; at most 5
contexts may be open on a socket, and contexts of interrupted replies that are not yet
closed count against it (the server then closes the socket, 1008: reported in
https://github.com/livekit/agents/issues/5844); a demultiplexing reader task per socket
would replace today's read-until-isFinal; and it is not offered for eleven_v3. Its one
real gain, prosody carried across a reply's sentences, is worth a try once the worker
hands a provider the whole reply as a stream; not in this change.

The SDK's own `convert_realtime` is a blocking client (a thread per sentence, no flush,
nothing to warm), so the protocol is spoken with the asyncio `websockets` client while
the messages are built with the SDK's types.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlencode

from elevenlabs.types import CloseConnection, GenerationConfig, InitializeConnection, RealtimeVoiceSettings, SendText
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State

from services.providers import ProviderError, kind_of_status
from voxline.config import TtsSettings

log = logging.getLogger("voxline.tts.elevenlabs")

OUTPUT_FORMAT = "ulaw_8000"
REFILL_PAUSE_S = 5.0
IDLE_MARGIN_S = 10.0  # a warm socket is replaced this long before the server would close it
_VOICE_ID = re.compile(r"[A-Za-z0-9]{16,40}")


def close_kind(code: int, reason: str) -> str:
    """The error kind of a close frame that came before `isFinal`."""
    lowered = reason.lower()
    if code == 1008 and any(word in lowered for word in ("key", "auth", "unauthori")):
        return "auth"
    if "rate" in lowered or "concurren" in lowered or "quota" in lowered or code == 1013:
        return "rate_limited"
    if code == 1011:
        return "server"
    if code == 1008:
        return "bad_request"
    return "dropped"


class ElevenLabsTtsProvider:
    name = "elevenlabs"

    def __init__(self, settings: TtsSettings) -> None:
        self.settings = settings
        self.timeout_s = settings.elevenlabs.timeout_s
        schedule = [float(x) for x in settings.elevenlabs.chunk_schedule.split(",") if x.strip()]
        init = InitializeConnection(
            voice_settings=RealtimeVoiceSettings(
                stability=settings.elevenlabs.stability, similarity_boost=settings.elevenlabs.similarity_boost
            ),
            generation_config=GenerationConfig(chunk_length_schedule=schedule or None),
        )
        self._init_message = init.model_dump_json(by_alias=True, exclude_none=True)
        self._pool: dict[str, list[tuple[ClientConnection, float]]] = {}
        self._refills: dict[str, asyncio.Task[None]] = {}
        self._keeper: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._refill_paused_until: dict[str, float] = {}
        self._closed = False

    def voice_for(self, voice: str) -> str:
        """Agents may name a voice of another provider (a fallback chain); only an id is ours."""
        return voice if _VOICE_ID.fullmatch(voice) else self.settings.elevenlabs.voice_id

    @property
    def max_idle_s(self) -> float:
        """Age past which a warm socket is replaced: short of the server's inactivity timeout."""
        timeout = self.settings.elevenlabs.inactivity_timeout_s
        return timeout - min(IDLE_MARGIN_S, timeout / 2)

    def url(self, voice_id: str) -> str:
        query = urlencode(
            {
                "model_id": self.settings.elevenlabs.model,
                "output_format": OUTPUT_FORMAT,
                "inactivity_timeout": self.settings.elevenlabs.inactivity_timeout_s,
            }
        )
        base = self.settings.elevenlabs.base_url.rstrip("/")
        return f"{base}/v1/text-to-speech/{quote(voice_id)}/stream-input?{query}"

    async def load(self) -> None:
        """Open the default voice's warm sockets before the worker reports ready; a refusal
        here is logged (so a bad key shows at start) but does not stop the worker."""
        if self.settings.elevenlabs.warm_sockets > 0:
            self._refill_soon(self.settings.elevenlabs.voice_id)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._refills[self.settings.elevenlabs.voice_id]), self.timeout_s)
            if self._keeper is None:
                self._keeper = asyncio.create_task(self._keep_fresh(), name="elevenlabs-keeper")

    async def _connect(self, voice_id: str) -> ClientConnection:
        try:
            ws = await connect(
                self.url(voice_id),
                additional_headers={"xi-api-key": self.settings.elevenlabs.api_key.get_secret_value()},
                open_timeout=self.timeout_s,
                close_timeout=1.0,
                max_size=2**22,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise ProviderError(self.name, kind_of_status(status), "handshake refused", status) from None
        except TimeoutError:
            raise ProviderError(self.name, "timeout", f"no handshake within {self.timeout_s}s") from None
        except (OSError, InvalidHandshake) as exc:
            raise ProviderError(self.name, "dropped", f"cannot connect ({type(exc).__name__})") from None
        try:
            await ws.send(self._init_message)
        except ConnectionClosed as exc:
            raise self._closed_error(exc) from None
        return ws

    def _closed_error(self, exc: ConnectionClosed) -> ProviderError:
        code, reason = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd is not None else (1006, "")
        return ProviderError(self.name, close_kind(code, reason), f"socket closed before isFinal ({reason!r})", code)

    async def _take(self, voice_id: str) -> ClientConnection:
        """A warm socket when one is fresh, else a new one (the handshake then counts)."""
        pool = self._pool.setdefault(voice_id, [])
        fresh: ClientConnection | None = None
        while pool and fresh is None:
            ws, opened = pool.pop(0)
            if ws.state is State.OPEN and time.monotonic() - opened < self.max_idle_s:
                fresh = ws
            else:
                self._close_later(ws)
        self._refill_soon(voice_id)
        return fresh if fresh is not None else await self._connect(voice_id)

    def _close_later(self, ws: ClientConnection) -> None:
        task = asyncio.create_task(ws.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _refill_soon(self, voice_id: str) -> None:
        running = self._refills.get(voice_id)
        paused = time.monotonic() < self._refill_paused_until.get(voice_id, 0.0)
        if (
            self.settings.elevenlabs.warm_sockets > 0
            and not self._closed
            and not paused
            and (running is None or running.done())
        ):
            self._refills[voice_id] = asyncio.create_task(self._refill(voice_id), name=f"elevenlabs-warm-{voice_id}")

    async def _refill(self, voice_id: str) -> None:
        pool = self._pool.setdefault(voice_id, [])
        while len(pool) < self.settings.elevenlabs.warm_sockets and not self._closed:
            try:
                ws = await self._connect(voice_id)
            except ProviderError as exc:
                log.warning("could not pre-open a socket: %s", exc)
                # A bad key or an outage: sentences connect inline (and report it) for a
                # while, rather than every sentence paying for a second refused handshake.
                self._refill_paused_until[voice_id] = time.monotonic() + REFILL_PAUSE_S
                return
            if self._closed:
                await ws.close()
                return
            pool.append((ws, time.monotonic()))

    async def _keep_fresh(self) -> None:
        """Replace warm sockets before the server closes them for inactivity."""
        max_idle = self.max_idle_s
        while not self._closed:
            await asyncio.sleep(max_idle / 3)
            now = time.monotonic()
            for voice_id, pool in self._pool.items():
                stale = [entry for entry in pool if now - entry[1] > max_idle * 2 / 3]
                for entry in stale:
                    pool.remove(entry)
                    self._close_later(entry[0])
                if stale:
                    self._refill_soon(voice_id)

    async def _receive(self, ws: ClientConnection) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.timeout_s):
                raw = await ws.recv()
        except TimeoutError:
            raise ProviderError(self.name, "timeout", f"no audio for {self.timeout_s}s") from None
        except ConnectionClosed as exc:
            raise self._closed_error(exc) from None
        message: dict[str, Any] = json.loads(raw)
        return message

    async def synthesize(self, text: str, voice: str) -> AsyncIterator[bytes]:
        ws = await self._take(self.voice_for(voice))
        try:
            try:
                # The API wants text to end with a space; flush makes it speak now, whatever the schedule.
                await ws.send(SendText(text=text.strip() + " ", flush=True).model_dump_json(exclude_none=True))
                await ws.send(CloseConnection().model_dump_json())
            except ConnectionClosed as exc:
                raise self._closed_error(exc) from None
            while True:
                message = await self._receive(ws)
                if audio := message.get("audio"):
                    yield base64.b64decode(audio)
                if message.get("isFinal"):
                    return
                if message.get("error") or (message.get("message") and not message.get("audio")):
                    detail = str(message.get("error") or "error message")
                    raise ProviderError(self.name, close_kind(int(message.get("code") or 1011), detail), detail)
        finally:
            # A barge-in lands here too: closing the socket stops the generation server-side.
            await ws.close()

    async def close(self) -> None:
        self._closed = True
        for task in (*self._refills.values(), *([self._keeper] if self._keeper else [])):
            task.cancel()
        for pool in self._pool.values():
            for ws, _ in pool:
                with contextlib.suppress(Exception):
                    await ws.close()
        self._pool.clear()
