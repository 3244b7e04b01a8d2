"""A Deepgram live STT emulator: GET /v1/listen upgraded to a WebSocket on 127.0.0.1.

Close enough to Deepgram's wire format that the official SDK parses every message into its
typed events. It cannot understand speech, so it hears *that* the caller speaks (frame
energy of the decoded mu-law) and says the next scripted transcript. All its timing is in
audio time, counted in frames, like Deepgram's own timestamps, so replayed audio sent
faster than real time is heard the same way as live audio.

Per connection: SpeechStarted at speech onset, interim Results every 250 ms of speech, one
interim with the whole utterance `interim_at_pause_ms` into the silence after it (Deepgram
has then decoded the last word; 0 = no such interim), an is_final + speech_final Result
after `endpointing` ms of silence (after `final_delay_ms` of wall time), UtteranceEnd after
`utterance_end_ms` of silence, an empty is_final Result every second of silence (as
Deepgram acknowledges silence), Metadata on CloseStream.
Faults are injected through attributes, set by a test from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from voxline.audio import FRAME_SAMPLES, mulaw_to_pcm16, rms_dbfs

FRAME_MS = 20
INTERIM_EVERY_MS = 250
SILENCE_FINAL_MS = 1000


@dataclass
class ConnectionLog:
    index: int
    params: dict[str, list[str]]
    audio_bytes: int = 0
    keepalives: int = 0
    close_streams: int = 0
    dropped: bool = False
    stalled: bool = False

    def param(self, name: str) -> str:
        return self.params.get(name, [""])[0]

    @property
    def unusable_keywords(self) -> list[str]:
        """`keywords` Deepgram cannot boost: Keywords (Nova-2 and older) are single words,
        phrases are for Nova-3's keyterm (https://developers.deepgram.com/docs/keywords,
        https://developers.deepgram.com/docs/keyterm). ASSUMPTION: such a request is not
        refused, the phrase is just not boosted as one, so the emulator only records it."""
        return [k for k in self.params.get("keywords", []) if len(k.split(":")[0].split()) != 1]


@dataclass
class FinalLog:
    connection: int
    text: str
    speech_ms: int  # onset to the end of the last voiced frame, in audio time


@dataclass
class DeepgramEmulator:
    api_key: str = "dg-emulator-key-0001"
    transcripts: list[str] = field(default_factory=list)  # said in order, one per utterance
    final_delay_ms: int = 0  # wall time between the endpoint and the speech_final Result
    interim_at_pause_ms: int = 80  # audio time into a pause of the interim with every word; 0 = none
    speech_dbfs: float = -40.0
    reject_next: list[int] = field(default_factory=list)  # HTTP statuses for the next handshakes
    drop_after_speech_ms: int | None = None  # one shot: abort the socket this far into an utterance
    stall_next: int = 0  # the next N connections take audio and never answer
    speech_final: bool = True  # False: endpoints are plain is_final Results; UtteranceEnd ends the turn
    connections: list[ConnectionLog] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    finals: list[FinalLog] = field(default_factory=list)
    port: int = 0
    _server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> int:
        self._server = await serve(self._handle, "127.0.0.1", 0, process_request=self._handshake)
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != "/v1/listen":
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if request.headers.get("Authorization") != f"Token {self.api_key}":
            self.rejected.append(401)
            return _json_response(401, {"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials."})
        if self.reject_next:
            status = self.reject_next.pop(0)
            self.rejected.append(status)
            return _json_response(status, {"err_code": "EMULATED", "err_msg": f"emulated HTTP {status}"})
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        log = ConnectionLog(len(self.connections), parse_qs(urlsplit(ws.request.path).query))
        self.connections.append(log)
        if self.stall_next > 0:
            self.stall_next -= 1
            log.stalled = True
        await _Listener(self, ws, log).run()


def _json_response(status: int, body: dict[str, Any]) -> Response:
    data = json.dumps(body).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return Response(status, HTTPStatus(status).phrase, headers, data)


class _Listener:
    """One connection: energy endpointing in audio time, results through a delayed outbox."""

    def __init__(self, emulator: DeepgramEmulator, ws: ServerConnection, log: ConnectionLog) -> None:
        self.em, self.ws, self.log = emulator, ws, log
        self.request_id = str(uuid.uuid4())
        self.endpointing_ms = int(log.param("endpointing") or 10)
        self.utterance_end_ms = int(log.param("utterance_end_ms") or 0)
        self.model = log.param("model") or "nova-3"
        self.outbox: asyncio.Queue[tuple[float, str] | None] = asyncio.Queue()
        self.carry = b""
        self.t_ms = 0  # audio heard on this connection
        self.final_upto_ms = 0  # audio covered by is_final Results
        self.in_speech = False
        self.run_frames = self.run_start_ms = 0
        self.onset_ms = self.voice_end_ms = self.silence_ms = self.interim_ms = 0
        self.utterance_end_at: int | None = None  # last word end awaiting UtteranceEnd

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    if not await self._audio(message):
                        return
                else:
                    await self._control(json.loads(message))
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _control(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "KeepAlive":
            self.log.keepalives += 1
        elif kind == "Finalize" and self.in_speech:
            self._final(from_finalize=True)
        elif kind == "CloseStream":
            self.log.close_streams += 1
            self._send(self._metadata())
            self.outbox.put_nowait(None)  # the sender closes the socket after what is queued

    async def _audio(self, data: bytes) -> bool:
        """Consume audio in 20 ms frames; False once the socket was dropped on purpose."""
        self.log.audio_bytes += len(data)
        self.carry += data
        while len(self.carry) >= FRAME_SAMPLES:
            frame, self.carry = self.carry[:FRAME_SAMPLES], self.carry[FRAME_SAMPLES:]
            self.t_ms += FRAME_MS
            voiced = rms_dbfs(mulaw_to_pcm16(frame)) > self.em.speech_dbfs
            self._speech_frame() if voiced else self._silence_frame()
            drop = self.em.drop_after_speech_ms
            if drop is not None and self.in_speech and self.voice_end_ms - self.onset_ms >= drop:
                self.em.drop_after_speech_ms = None
                self.log.dropped = True
                self.ws.transport.abort()  # no close frame: a network failure, not a goodbye
                return False
        return True

    def _speech_frame(self) -> None:
        self.silence_ms = 0
        if not self.in_speech:
            self.run_frames += 1
            if self.run_frames == 1:
                self.run_start_ms = self.t_ms - FRAME_MS
            if self.run_frames < 2:
                return
            self.in_speech, self.onset_ms, self.interim_ms = True, self.run_start_ms, self.t_ms
            self.utterance_end_at = None
            self._send({"type": "SpeechStarted", "channel": [0], "timestamp": self.onset_ms / 1000})
        self.voice_end_ms = self.t_ms
        if self.t_ms - self.interim_ms >= INTERIM_EVERY_MS:
            self.interim_ms = self.t_ms
            words = self._script().split()
            heard = words[: 1 + (self.t_ms - self.onset_ms) // 400]
            self._send(self._results(" ".join(heard), is_final=False, speech_final=False))

    def _silence_frame(self) -> None:
        self.run_frames = 0
        if self.in_speech:
            self.silence_ms += FRAME_MS
            if self.silence_ms == self.em.interim_at_pause_ms < self.endpointing_ms:
                self._send(self._results(self._script(), is_final=False, speech_final=False))
            if self.silence_ms >= self.endpointing_ms:
                self._final(from_finalize=False)
            return
        if self.utterance_end_at is not None and self.utterance_end_ms:
            if self.t_ms - self.utterance_end_at >= self.utterance_end_ms:
                self._send({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": self.utterance_end_at / 1000})
                self.utterance_end_at = None
        if self.t_ms - self.final_upto_ms >= SILENCE_FINAL_MS:
            self._send(self._results("", is_final=True, speech_final=False))

    def _final(self, from_finalize: bool) -> None:
        text = self.em.transcripts.pop(0) if self.em.transcripts else "hello"
        self.em.finals.append(FinalLog(self.log.index, text, self.voice_end_ms - self.onset_ms))
        speech_final = self.em.speech_final and not from_finalize
        message = self._results(text, is_final=True, speech_final=speech_final, from_finalize=from_finalize)
        self._send(message, delay_ms=self.em.final_delay_ms)
        self.in_speech, self.utterance_end_at = False, self.voice_end_ms

    def _script(self) -> str:
        return self.em.transcripts[0] if self.em.transcripts else "hello"

    def _results(self, text: str, is_final: bool, speech_final: bool, from_finalize: bool = False) -> dict[str, Any]:
        start, end = self.final_upto_ms, self.t_ms
        if is_final:
            self.final_upto_ms = end
        words = text.split()
        span_start, span_end = (self.onset_ms, self.voice_end_ms) if words else (start, end)
        step = (span_end - span_start) / max(1, len(words))
        word_items = [
            {
                "word": w.strip(".,!?").lower(),
                "start": (span_start + i * step) / 1000,
                "end": (span_start + (i + 1) * step) / 1000,
                "confidence": 0.99,
                "punctuated_word": w,
            }
            for i, w in enumerate(words)
        ]
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": (end - start) / 1000,
            "start": start / 1000,
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": text, "confidence": 0.99, "words": word_items}]},
            "metadata": {
                "request_id": self.request_id,
                "model_info": {"name": f"general-{self.model}", "version": "emulated", "arch": self.model},
                "model_uuid": str(uuid.UUID(int=0)),
            },
        }

    def _metadata(self) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": "0" * 64,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "duration": self.t_ms / 1000,
            "channels": 1,
        }

    def _send(self, message: dict[str, Any], delay_ms: int = 0) -> None:
        if not self.log.stalled:
            self.outbox.put_nowait((time.monotonic() + delay_ms / 1000, json.dumps(message)))

    async def _send_loop(self) -> None:
        """In order, each message not before its due time (a delayed final holds back later ones)."""
        while (item := await self.outbox.get()) is not None:
            due, text = item
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(text)
        await self.ws.close()
