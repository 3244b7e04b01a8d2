"""Gateway pieces that need no socket: Twilio's wire format, stream tokens."""

from __future__ import annotations

import base64
import json

import pytest

from services.gateway import twilio_protocol as tp
from services.gateway.stream_token import InvalidStreamToken, StreamTokens

parse = tp.TwilioSerializer.deserialize


def test_parse_twilio_events() -> None:
    # As Twilio sends them: numbers as strings, sequenceNumber and streamSid beside the event.
    media = {
        "event": "media",
        "sequenceNumber": "4",
        "media": {"track": "inbound", "chunk": "3", "timestamp": "60", "payload": "//8="},
        "streamSid": "MZ1",
    }
    event = parse(json.dumps(media))
    assert event == tp.Media(tp.MediaChunk(b"\xff\xff", track="inbound", chunk=3, timestamp=60))
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
    assert parse(json.dumps(start)) == tp.Start(
        tp.StreamMetadata("MZ1", "CA1", "AC1", {"agent_id": "demo"}, tp.MediaFormat("audio/x-mulaw", 8000, 1))
    )
    assert parse('{"event":"mark","mark":{"name":"t1.s0.c0.e100"}}') == tp.MarkEcho(tp.MarkLabel("t1.s0.c0.e100"))
    assert parse('{"event":"dtmf","dtmf":{"track":"inbound_track","digit":"5"}}') == tp.Dtmf(tp.DtmfDigit("5"))
    stop = parse('{"event":"stop","stop":{"accountSid":"AC1","callSid":"CA1"}}')
    assert stop == tp.Stop(tp.StopMetadata("AC1", "CA1"))
    assert parse('{"event":"connected","protocol":"Call","version":"1.0.0"}') == tp.Connected("Call", "1.0.0")
    assert parse('{"event":"something-new","whatever":[1]}') is None


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[1,2]",
        '{"event":"media"}',
        '{"event":"media","media":{"payload":"***"}}',
        '{"event":"start","start":{}}',
        '{"event":"mark","mark":{}}',
        '{"event":"media","media":{"payload":"//8=","chunk":"three"}}',
        '{"event":"dtmf","dtmf":{"digit":5}}',
        '{"no":"event"}',
        '{"event":7}',
        b"\xff\xfe",
    ],
)
def test_malformed_twilio_messages_raise_protocol_error(text: str | bytes) -> None:
    with pytest.raises(tp.ProtocolError):
        parse(text)


def test_protocol_errors_say_which_event_and_field() -> None:
    with pytest.raises(tp.ProtocolError, match=r"malformed 'media' event: .*payload"):
        parse('{"event":"media","media":{"payload":"***"}}')
    with pytest.raises(tp.ProtocolError, match="not JSON"):
        parse("{not json")


def test_serializer_builds_twilio_messages() -> None:
    s = tp.TwilioSerializer("MZ9")
    media = json.loads(s.media(b"\x00\x01"))
    assert media == {"event": "media", "streamSid": "MZ9", "media": {"payload": base64.b64encode(b"\x00\x01").decode()}}
    assert json.loads(s.mark("m1")) == {"event": "mark", "streamSid": "MZ9", "mark": {"name": "m1"}}
    assert json.loads(s.clear()) == {"event": "clear", "streamSid": "MZ9"}
    # Whatever a stream sid or mark name holds, the message stays valid JSON.
    odd = tp.TwilioSerializer('MZ"\\')
    assert json.loads(odd.mark('a"b'))["mark"]["name"] == 'a"b'
    assert json.loads(odd.media(b"\x01"))["streamSid"] == 'MZ"\\'


def test_stream_tokens_bind_call_agent_and_account() -> None:
    tokens = StreamTokens("s" * 32, ttl_s=60)
    token = tokens.issue("CA1", "demo", "AC1")
    tokens.check(token, "CA1", "demo", "AC1")
    for call, agent, account in (("CA2", "demo", "AC1"), ("CA1", "other", "AC1"), ("CA1", "demo", "AC2")):
        with pytest.raises(InvalidStreamToken):
            tokens.check(token, call, agent, account)
    with pytest.raises(InvalidStreamToken):
        StreamTokens("a" * 32, 60).check(token, "CA1", "demo", "AC1")
    with pytest.raises(InvalidStreamToken):
        StreamTokens("s" * 32, ttl_s=-10).check(StreamTokens("s" * 32, ttl_s=-10).issue("CA1", "demo"), "CA1", "demo")
    with pytest.raises(InvalidStreamToken):
        tokens.check("", "CA1", "demo")


def test_a_token_without_jti_or_issue_time_is_refused() -> None:
    """A token signed before tokens were single-use (or forged without them) cannot be spent."""
    import jwt

    old = jwt.encode({"sub": "CA1", "agent": "demo", "exp": 2**33}, "s" * 32, algorithm="HS256")
    with pytest.raises(InvalidStreamToken, match="jti"):
        StreamTokens("s" * 32, 60).check(old, "CA1", "demo")


def test_the_tokens_of_a_call_are_ordered_and_unique() -> None:
    tokens = StreamTokens("s" * 32, ttl_s=60)
    first, second = (tokens.check(tokens.issue("CA1", "demo"), "CA1", "demo") for _ in range(2))
    assert first.jti != second.jti
    assert second.issued_us > first.issued_us
