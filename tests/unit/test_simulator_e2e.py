"""The simulator against a tiny in-test gateway: webhook, Media Stream, marks, clear, record.

The fake gateway answers a turn after 200 ms of caller silence and clears Twilio's buffer
as soon as the caller talks over an unfinished reply, which is all the simulator needs
to exercise greeting, turn, barge-in and hang-up paths for real over sockets.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pytest
import websockets
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse
from websockets.asyncio.server import ServerConnection

from voxline.audio import mulaw_to_pcm16, rms_dbfs, tone_pcm16
from voxline.simulator import CallScript, Utterance, run_call

TOKEN = "tok-123"
AUTH = "test-auth-token"


class FakeGateway:
    def __init__(self) -> None:
        self.base_url = ""
        self.ws_url = ""
        self.webhooks: list[dict[str, str]] = []
        self.received: list[dict[str, Any]] = []
        self.bad_frames: list[str] = []
        self.echoes: list[str] = []
        self.dtmf: list[str] = []
        self.records: dict[str, dict[str, Any]] = {}
        self.signature_ok: list[bool] = []

    # -- HTTP: just enough of HTTP/1.1 for httpx -----------------------------------------

    async def http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        request_line, *header_lines = head.split("\r\n")
        method, target, _ = request_line.split(" ")
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines if h)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        status, ctype, payload = self.route(method, target, headers, body.decode())
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(payload)}\r\n"
            f"Connection: close\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        writer.close()

    def route(self, method: str, target: str, headers: dict[str, str], body: str) -> tuple[int, str, bytes]:
        path = urlsplit(target).path
        if method == "POST" and path == "/twilio/voice":
            form = dict(parse_qsl(body))
            self.webhooks.append(form)
            sig = headers.get("x-twilio-signature", "")
            self.signature_ok.append(RequestValidator(AUTH).validate(self.base_url + target, form, sig))
            response = VoiceResponse()
            connect = Connect()
            stream = connect.stream(url=self.ws_url)
            stream.parameter(name="agent_id", value="demo")
            stream.parameter(name="stream_token", value=TOKEN)
            response.append(connect)
            return 200, "application/xml", str(response).encode()
        if method == "GET" and path.startswith("/v1/calls/"):
            record = self.records.get(path.rsplit("/", 1)[1])
            if record is None:
                return 404, "application/json", b'{"detail": "no call"}'
            return 200, "application/json", json.dumps(record).encode()
        return 404, "text/plain", b"not found"

    # -- Media Stream ------------------------------------------------------------------

    async def reply(self, ws: ServerConnection, sid: str, turn: int, chunks: int) -> None:
        """Reply audio streamed ahead of real time, 100 ms per chunk, a mark after each."""
        for c in range(chunks):
            audio = base64.b64encode(b"\x10" * 800).decode()
            await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": audio}}))
            name = f"t{turn}.s0.c{c}.e{(c + 1) * 100}" + (".S.T" if c == chunks - 1 else "")
            await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": name}}))

    async def stream(self, ws: ServerConnection) -> None:
        self.received.append(json.loads(await ws.recv()))
        start = json.loads(await ws.recv())
        self.received.append(start)
        if start["start"]["customParameters"].get("stream_token") != TOKEN:
            await ws.close(1008, "invalid stream token")
            return
        sid, call_sid = start["streamSid"], start["start"]["callSid"]
        turn, talking, quiet, playing = 0, False, 0, True
        await self.reply(ws, sid, 0, 1)
        async for raw in ws:
            try:
                msg = json.loads(raw)
            except json.JSONDecodeError:
                self.bad_frames.append(str(raw))
                continue
            self.received.append(msg)
            event = msg["event"]
            if event == "mark":
                name = msg["mark"]["name"]
                self.echoes.append(name)
                if name.startswith(f"t{turn}.") and name.endswith(".T"):
                    playing = False
            elif event == "dtmf":
                self.dtmf.append(msg["dtmf"]["digit"])
            elif event == "stop":
                self.records[call_sid] = {"call_sid": call_sid, "status": "ended", "turns": [{"turn_id": 0}]}
                break
            elif event == "media":
                try:
                    pcm = mulaw_to_pcm16(base64.b64decode(msg["media"]["payload"], validate=True))
                except binascii.Error:
                    self.bad_frames.append(msg["media"]["payload"])
                    continue
                loud = rms_dbfs(pcm) > -40.0
                if loud and not talking:
                    talking, quiet = True, 0
                    if playing:
                        await ws.send(json.dumps({"event": "clear", "streamSid": sid}))
                        playing = False
                elif talking and not loud:
                    quiet += 1
                    if quiet == 10:
                        talking, turn, playing = False, turn + 1, True
                        await self.reply(ws, sid, turn, 6)


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    fake = FakeGateway()
    async with websockets.serve(fake.stream, "127.0.0.1", 0) as ws_server:
        http_server = await asyncio.start_server(fake.http, "127.0.0.1", 0)
        ws_port = next(iter(ws_server.sockets)).getsockname()[1]
        http_port = http_server.sockets[0].getsockname()[1]
        fake.ws_url = f"ws://127.0.0.1:{ws_port}/twilio/media"
        fake.base_url = f"http://127.0.0.1:{http_port}"
        async with http_server:
            yield fake


def speech(ms: int) -> np.ndarray:
    return tone_pcm16(ms, freq=300.0, level=0.5)


@pytest.mark.asyncio
async def test_call_with_turn_barge_in_dtmf_and_malformed_frames(gateway: FakeGateway) -> None:
    script = CallScript(
        utterances=[
            Utterance(pcm8k=speech(300), pause_ms=0, dtmf="5"),
            Utterance(pcm8k=speech(300), barge_in_after_ms=100),
        ],
        extra_parameters={"scenario": "e2e"},
        malformed_frame_after_ms=60,
        reply_timeout_s=5.0,
        greeting_timeout_s=5.0,
        trailing_silence_ms=60,
    )
    result = await run_call(gateway.base_url, script, auth_token=AUTH)

    assert result.errors == []
    assert result.accepted and not result.closed_by_gateway
    assert gateway.signature_ok == [True]
    assert gateway.webhooks[0]["CallSid"] == script.call_sid == result.call_sid
    assert gateway.webhooks[0]["CallStatus"] == "in-progress"

    start = gateway.received[1]["start"]
    assert start["customParameters"] == {"agent_id": "demo", "stream_token": TOKEN, "scenario": "e2e"}
    assert start["callSid"] == script.call_sid
    seqs = [int(m["sequenceNumber"]) for m in gateway.received[1:]]
    assert seqs == list(range(1, len(seqs) + 1))
    media = [
        m["media"] for m in gateway.received if m["event"] == "media" and not m["media"]["payload"].startswith("!")
    ]
    assert [int(m["chunk"]) for m in media] == list(range(1, len(media) + 1))
    assert all(int(m["timestamp"]) == (int(m["chunk"]) - 1) * 20 for m in media)
    assert gateway.received[-1]["event"] == "stop"
    assert gateway.received[-1]["stop"]["callSid"] == script.call_sid
    assert len(gateway.bad_frames) == 2  # one invalid JSON text, one media with bad base64
    assert gateway.dtmf == ["5"]

    assert result.greeting_latency_ms is not None
    assert "t0.s0.c0.e100.S.T" in result.marks_echoed
    assert gateway.echoes == result.marks_echoed
    assert result.clears == 1

    first, second = result.turns
    assert (first.turn_id, second.turn_id) == (1, 2)
    assert first.first_media_latency_ms is not None and first.first_played_latency_ms is not None
    assert first.reply_audio_ms == pytest.approx(600.0)
    assert first.reply_played_ms < first.reply_audio_ms  # cut short by the barge-in
    assert not first.completed and second.completed
    assert second.barge_in and second.reply_played_ms == pytest.approx(600.0, abs=1.0)

    (barge,) = result.barge_ins
    assert barge.interrupted_turn == 1
    assert barge.stopped_by == "clear"
    assert barge.latency_ms is not None and barge.latency_ms >= 0
    assert barge.cancelled_audio_heard_after_ms == 0

    assert {p.turn_id for p in result.played} == {0, 1, 2}
    assert result.record is not None and result.record["status"] == "ended"


@pytest.mark.asyncio
async def test_stream_without_token_is_refused(gateway: FakeGateway) -> None:
    script = CallScript(
        utterances=[Utterance(pcm8k=speech(100))],
        drop_stream_token=True,
        greeting_timeout_s=5.0,
        record_timeout_s=0.0,
    )
    result = await run_call(gateway.base_url, script)
    assert not result.accepted
    assert result.closed_by_gateway and result.close_code == 1008
    assert result.close_reason == "invalid stream token"
    assert result.turns == [] and result.record is None
    assert any("404" in note for note in result.notes)
