"""A Deepgram live STT emulator: GET /v1/listen upgraded to a WebSocket on 127.0.0.1.

Close enough to Deepgram's wire format that the official SDK parses every message into its
typed events. It cannot understand speech, so it hears *that* something sounds and whether
it sounds like a voice, and says the next scripted transcript for a voice. All its timing is
in audio time, counted in frames, like Deepgram's own timestamps, so replayed audio sent
faster than real time is heard the same way as live audio.

Per connection, following Deepgram's documentation:
- SpeechStarted when its VAD hears sound (`vad_dbfs`), voice or not: it fires on noise and
  echo too, and no words need follow ("it really should be called Noise Detection",
  https://github.com/deepgram/deepgram-python-sdk/issues/403,
  https://github.com/deepgram/deepgram-js-sdk/issues/369). Words (the next scripted
  transcript) come only from a segment with voice: frames above `speech_dbfs` whose
  spectrum is not flat like noise's. ASSUMPTION: the measure; Deepgram says nothing of it.
- Interim Results about once a second of audio, not triggered by pauses: the documented
  example shows interims at 1.1, 2.1, 3.1 ... s (https://developers.deepgram.com/docs/using-interim-results).
- An is_final + speech_final Result after `endpointing` ms of silence
  (https://developers.deepgram.com/docs/understand-endpointing-interim-results), sent
  `final_delay_ms` of wall time later; for a segment without words an empty is_final one
  (ASSUMPTION: not speech_final, there was no speech to end).
- Finalize: everything heard so far as one is_final Result with `from_finalize: true`,
  after `final_delay_ms` (ASSUMPTION: as long as an endpoint's final), and none when no
  segment is open ("not guaranteed if there is no significant amount of audio data to
  process", https://developers.deepgram.com/docs/finalize). The segment ends there.
- UtteranceEnd `utterance_end_ms` after the last word; an empty is_final Result every
  second of silence (as Deepgram acknowledges silence); Metadata on CloseStream.
Each Result with words takes the next scripted transcript, so an utterance Deepgram
finalizes in two pieces (a Finalize mid-utterance) needs two entries.
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

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from voxline.audio import FRAME_SAMPLES, mulaw_to_pcm16, rms_dbfs

FRAME_MS = 20
INTERIM_EVERY_MS = 1000  # https://developers.deepgram.com/docs/using-interim-results
SILENCE_FINAL_MS = 1000
WORD_MS = 400  # interims name one word per this much voice heard
VOICE_FLATNESS = 0.3  # spectral flatness below this sounds like a voice (white noise ~0.55)
MIN_VOICE_FRAMES = 3  # a segment with less voice than this has no words


@dataclass
class ConnectionLog:
    index: int
    params: dict[str, list[str]]
    audio_bytes: int = 0
    keepalives: int = 0
    finalizes: int = 0
    speech_starts: int = 0  # SpeechStarted sent, for words or not
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
    speech_ms: int  # first to last voiced frame, in audio time
    from_finalize: bool = False


@dataclass
class DeepgramEmulator:
    api_key: str = "dg-emulator-key-0001"
    transcripts: list[str] = field(default_factory=list)  # said in order, one per utterance
    final_delay_ms: int = 0  # wall time between an endpoint (or a Finalize) and its final Result
    vad_dbfs: float = -50.0  # Deepgram's VAD: a frame louder than this is sound (SpeechStarted)
    speech_dbfs: float = -40.0  # a voice this loud (and not noise-like) gives words
    reject_next: list[int] = field(default_factory=list)  # HTTP statuses for the next handshakes
    drop_after_speech_ms: int | None = None  # one shot: abort the socket this far into an utterance
    stall_next: int = 0  # the next N connections take audio and never answer
    speech_final: bool = True  # False: endpoints are plain is_final Results; UtteranceEnd ends the turn
    answer_finalize: bool = True  # False: Finalize gets no answer (Deepgram does not promise one)
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
    """One connection: VAD and endpointing in audio time, results through a delayed outbox."""

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
        self.in_speech = False  # a segment is open: SpeechStarted was sent
        self.run_frames = self.run_start_ms = 0
        self.onset_ms = self.silence_ms = self.next_interim_ms = 0
        self.voice_frames = 0  # voice-like frames of the segment: words or not
        self.voice_start_ms: int | None = None  # first and last loud frame of the segment
        self.voice_end_ms = 0
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
        elif kind == "Finalize":
            self.log.finalizes += 1
            if self.in_speech and self.em.answer_finalize:  # else no answer (docs/finalize)
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
            pcm = mulaw_to_pcm16(frame)
            level = rms_dbfs(pcm)
            loud = level > self.em.speech_dbfs
            self._frame(level > self.em.vad_dbfs, loud, loud and spectral_flatness(pcm) < VOICE_FLATNESS)
            drop = self.em.drop_after_speech_ms
            if drop is not None and self.in_speech and self.voice_ms >= drop:
                self.em.drop_after_speech_ms = None
                self.log.dropped = True
                self.ws.transport.abort()  # no close frame: a network failure, not a goodbye
                return False
        return True

    @property
    def voice_ms(self) -> int:
        return 0 if self.voice_start_ms is None else self.voice_end_ms - self.voice_start_ms

    @property
    def has_words(self) -> bool:
        return self.voice_frames >= MIN_VOICE_FRAMES

    def _frame(self, sound: bool, loud: bool, voice: bool) -> None:
        self.silence_ms = 0 if sound else self.silence_ms + FRAME_MS
        if not self.in_speech:
            if not sound:
                self.run_frames = 0
                self._idle_silence()
                return
            self.run_frames += 1
            if self.run_frames == 1:
                self.run_start_ms, self.voice_frames, self.voice_start_ms = self.t_ms - FRAME_MS, 0, None
            self._heard(loud, voice)
            if self.run_frames < 2:
                return
            self.in_speech, self.onset_ms = True, self.run_start_ms
            self.next_interim_ms = self.onset_ms + INTERIM_EVERY_MS
            self.utterance_end_at = None
            self.log.speech_starts += 1
            self._send({"type": "SpeechStarted", "channel": [0], "timestamp": self.onset_ms / 1000})
            return
        self._heard(loud, voice)
        if self.t_ms >= self.next_interim_ms:
            self.next_interim_ms += INTERIM_EVERY_MS
            self._send(self._results(self._heard_so_far(), is_final=False, speech_final=False))
        if self.silence_ms >= self.endpointing_ms:
            self._final(from_finalize=False)

    def _heard(self, loud: bool, voice: bool) -> None:
        if loud:
            self.voice_start_ms = self.t_ms - FRAME_MS if self.voice_start_ms is None else self.voice_start_ms
            self.voice_end_ms = self.t_ms
        self.voice_frames += voice

    def _idle_silence(self) -> None:
        if self.utterance_end_at is not None and self.utterance_end_ms:
            if self.t_ms - self.utterance_end_at >= self.utterance_end_ms:
                self._send({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": self.utterance_end_at / 1000})
                self.utterance_end_at = None
        if self.t_ms - self.final_upto_ms >= SILENCE_FINAL_MS:
            self._send(self._results("", is_final=True, speech_final=False))

    def _heard_so_far(self) -> str:
        if not self.has_words:
            return ""
        words = self._script().split()
        return " ".join(words[: 1 + self.voice_ms // WORD_MS])

    def _final(self, from_finalize: bool) -> None:
        text = ""
        if self.has_words:
            text = self.em.transcripts.pop(0) if self.em.transcripts else "hello"
            self.em.finals.append(FinalLog(self.log.index, text, self.voice_ms, from_finalize))
        speech_final = self.em.speech_final and not from_finalize and bool(text)
        message = self._results(text, is_final=True, speech_final=speech_final, from_finalize=from_finalize)
        self._send(message, delay_ms=self.em.final_delay_ms)
        self.in_speech, self.run_frames = False, 0
        self.utterance_end_at = self.voice_end_ms if text else None

    def _script(self) -> str:
        return self.em.transcripts[0] if self.em.transcripts else "hello"

    def _results(self, text: str, is_final: bool, speech_final: bool, from_finalize: bool = False) -> dict[str, Any]:
        start, end = self.final_upto_ms, self.t_ms
        if is_final:
            self.final_upto_ms = end
        words = text.split()
        voice_start = self.onset_ms if self.voice_start_ms is None else self.voice_start_ms
        span_start, span_end = (voice_start, self.voice_end_ms) if words else (start, end)
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


def spectral_flatness(pcm: np.ndarray) -> float:
    """Geometric over arithmetic mean of the power spectrum: near 0 for a voice's harmonics,
    near 0.55 for white noise."""
    x = pcm.astype(np.float64) * np.hanning(len(pcm))
    power = np.abs(np.fft.rfft(x)) ** 2 + 1e-9
    return float(np.exp(np.mean(np.log(power))) / np.mean(power))
