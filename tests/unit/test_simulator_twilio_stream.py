"""The simulator must speak Twilio's dialect exactly, in both directions."""

from __future__ import annotations

import binascii
import json

import pytest
from twilio.twiml.voice_response import Connect, VoiceResponse

from voxline.simulator.twilio_stream import (
    ProtocolError,
    TwilioStream,
    encode,
    gateway_clear,
    gateway_mark,
    gateway_media,
    parse_gateway_message,
    parse_twilio_message,
    parse_twiml,
)


def roundtrip(message: dict) -> dict:
    return parse_twilio_message(encode(message))


def test_messages_from_twilio_have_twilios_shape_and_counters() -> None:
    s = TwilioStream("CA" + "1" * 32, "AC" + "2" * 32, stream_sid="MZ" + "3" * 32)
    connected = roundtrip(s.connected())
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}

    start = roundtrip(s.start({"agent_id": "demo", "stream_token": "tok"}))
    assert start["sequenceNumber"] == "1"
    assert start["streamSid"] == s.stream_sid
    assert start["start"] == {
        "accountSid": s.account_sid,
        "streamSid": s.stream_sid,
        "callSid": s.call_sid,
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"agent_id": "demo", "stream_token": "tok"},
    }

    media = [roundtrip(s.media(bytes([i]) * 160, i * 20)) for i in range(3)]
    assert [m["sequenceNumber"] for m in media] == ["2", "3", "4"]
    assert [m["media"]["chunk"] for m in media] == ["1", "2", "3"]
    assert [m["media"]["timestamp"] for m in media] == ["0", "20", "40"]
    assert media[1]["media"]["payload"] == bytes([1]) * 160
    assert media[1]["media"]["track"] == "inbound"

    dtmf = roundtrip(s.dtmf("7"))
    assert dtmf["dtmf"] == {"track": "inbound_track", "digit": "7"} and dtmf["sequenceNumber"] == "5"
    mark = roundtrip(s.mark("t1.s0.c0.e20.S.T"))
    assert mark["mark"] == {"name": "t1.s0.c0.e20.S.T"} and mark["streamSid"] == s.stream_sid
    stop = roundtrip(s.stop())
    assert stop["stop"] == {"accountSid": s.account_sid, "callSid": s.call_sid}
    assert stop["sequenceNumber"] == "7"
    assert s.chunks_sent == 3


def test_all_counters_are_strings_like_twilios() -> None:
    s = TwilioStream("CA1", "AC1")
    text = encode(s.media(b"\xff" * 160, 0))
    raw = json.loads(text)
    assert isinstance(raw["sequenceNumber"], str) and isinstance(raw["media"]["chunk"], str)


def test_broken_media_is_not_base64() -> None:
    s = TwilioStream("CA1", "AC1")
    with pytest.raises(binascii.Error):
        parse_twilio_message(encode(s.broken_media(0)))


def test_gateway_messages_parse() -> None:
    media = parse_gateway_message(encode(gateway_media("MZ1", b"\x01\x02")))
    assert (media.event, media.stream_sid, media.payload) == ("media", "MZ1", b"\x01\x02")
    mark = parse_gateway_message(encode(gateway_mark("MZ1", "t1.s0.c0.e20")))
    assert (mark.event, mark.mark_name) == ("mark", "t1.s0.c0.e20")
    assert parse_gateway_message(encode(gateway_clear("MZ1"))).event == "clear"


@pytest.mark.parametrize(
    "frame",
    [
        "{not json",
        b"\x00binary",
        json.dumps({"streamSid": "MZ1"}),
        json.dumps({"event": "media", "media": {"payload": "AAAA"}}),
        json.dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": "%%%"}}),
        json.dumps({"event": "mark", "streamSid": "MZ1", "mark": {}}),
        json.dumps({"event": "play", "streamSid": "MZ1"}),
    ],
)
def test_gateway_messages_twilio_would_reject(frame: str | bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_gateway_message(frame)


def test_twiml_stream_url_and_parameters() -> None:
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url="wss://gw.example/twilio/media")
    stream.parameter(name="agent_id", value="demo")
    stream.parameter(name="stream_token", value="abc.def")
    response.append(connect)
    target = parse_twiml(str(response))
    assert target.url == "wss://gw.example/twilio/media"
    assert target.parameters == {"agent_id": "demo", "stream_token": "abc.def"}


def test_twiml_relative_stream_url_is_resolved_against_the_gateway() -> None:
    response = VoiceResponse()
    connect = Connect()
    connect.stream(url="/twilio/media")
    response.append(connect)
    assert parse_twiml(str(response), "http://127.0.0.1:8080").url == "ws://127.0.0.1:8080/twilio/media"


def test_twiml_without_a_bidirectional_stream_is_refused() -> None:
    response = VoiceResponse()
    response.say("Sorry, this number is not configured.")
    response.hangup()
    with pytest.raises(ProtocolError, match="Connect"):
        parse_twiml(str(response))
    with pytest.raises(ProtocolError):
        parse_twiml("<html>")
