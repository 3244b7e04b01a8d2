"""Gateway pieces that need no socket: Twilio parsing, stream tokens, reply ordering."""

from __future__ import annotations

import base64
import json

import pytest

from proto import AudioFrame, FrameFlags
from services.gateway import twilio_protocol as tp
from services.gateway.media_stream import _ReplyOrder
from services.gateway.stream_token import InvalidStreamToken, StreamTokens


def test_parse_twilio_events() -> None:
    media = {"event": "media", "media": {"track": "inbound", "chunk": "3", "timestamp": "60", "payload": "//8="}}
    event = tp.parse(json.dumps(media))
    assert event == tp.Media(b"\xff\xff", 3, 60, "inbound")
    start = {
        "event": "start",
        "streamSid": "MZ1",
        "start": {
            "streamSid": "MZ1",
            "callSid": "CA1",
            "accountSid": "AC1",
            "customParameters": {"agent_id": "demo"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
    assert tp.parse(json.dumps(start)) == tp.Start("MZ1", "CA1", "AC1", {"agent_id": "demo"})
    assert tp.parse('{"event":"mark","mark":{"name":"t1.s0.c0.e100"}}') == tp.MarkEcho("t1.s0.c0.e100")
    assert tp.parse('{"event":"stop","stop":{"callSid":"CA1"}}') == tp.Stop("CA1")
    assert tp.parse('{"event":"something-new"}') is None


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[1,2]",
        '{"event":"media"}',
        '{"event":"media","media":{"payload":"***"}}',
        '{"event":"start","start":{}}',
        '{"event":"mark","mark":{}}',
    ],
)
def test_malformed_twilio_messages_raise_protocol_error(text: str) -> None:
    with pytest.raises(tp.ProtocolError):
        tp.parse(text)


def test_serializer_builds_twilio_messages() -> None:
    s = tp.TwilioSerializer("MZ9")
    media = json.loads(s.media(b"\x00\x01"))
    assert media == {"event": "media", "streamSid": "MZ9", "media": {"payload": base64.b64encode(b"\x00\x01").decode()}}
    assert json.loads(s.mark("m1")) == {"event": "mark", "streamSid": "MZ9", "mark": {"name": "m1"}}
    assert json.loads(s.clear()) == {"event": "clear", "streamSid": "MZ9"}


def test_stream_tokens_bind_call_and_agent() -> None:
    tokens = StreamTokens("s" * 32, ttl_s=60)
    token = tokens.issue("CA1", "demo")
    tokens.verify(token, "CA1", "demo")
    for call, agent in (("CA2", "demo"), ("CA1", "other")):
        with pytest.raises(InvalidStreamToken):
            tokens.verify(token, call, agent)
    with pytest.raises(InvalidStreamToken):
        StreamTokens("a" * 32, 60).verify(token, "CA1", "demo")
    with pytest.raises(InvalidStreamToken):
        StreamTokens("s" * 32, ttl_s=-10).verify(StreamTokens("s" * 32, ttl_s=-10).issue("CA1", "demo"), "CA1", "demo")
    with pytest.raises(InvalidStreamToken):
        tokens.verify("", "CA1", "demo")


def _frame(seq: int, chunk: int, end: bool = False) -> AudioFrame:
    flags = FrameFlags.END_OF_SENTENCE if end else FrameFlags.NONE
    return AudioFrame(b"x", turn_id=1, seq=seq, chunk=chunk, flags=flags)


def test_reply_order_restores_sentence_and_chunk_order() -> None:
    order = _ReplyOrder(turn_id=1)
    # Sentence 1 arrives complete before sentence 0 (two TTS workers in parallel).
    assert order.push(_frame(1, 0)) == []
    assert order.push(_frame(1, 1, end=True)) == []
    assert [f.chunk for f in order.push(_frame(0, 0))] == [0]
    released = order.push(_frame(0, 1, end=True))
    assert [(f.seq, f.chunk) for f in released] == [(0, 1), (1, 0), (1, 1)]
    assert order.pending == {}
