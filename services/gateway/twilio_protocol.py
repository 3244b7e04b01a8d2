"""Twilio Media Streams (bidirectional) wire format, in one place.

Inbound events: connected, start, media, mark, dtmf, stop. Outbound: media, mark, clear.
Audio is 8 kHz mono mu-law, base64 in JSON text frames. Anything that does not parse is a
`ProtocolError` with a message fit for the log; the caller of `parse` decides the outcome.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

import msgspec

# msgspec's decoder: a media event arrives 50 times a second per call, and the stdlib
# json module was the gateway's largest single cost at 200 calls.
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class ProtocolError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: dict[str, str] = field(default_factory=dict)
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000


@dataclass(frozen=True, slots=True)
class Media:
    payload: bytes
    chunk: int
    timestamp_ms: int
    track: str


@dataclass(frozen=True, slots=True)
class MarkEcho:
    name: str


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    digit: str


@dataclass(frozen=True, slots=True)
class Stop:
    call_sid: str


InboundEvent = Connected | Start | Media | MarkEcho | DtmfDigit | Stop


def _obj(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ProtocolError(f"{data.get('event')!r} event without a {key!r} object")
    return value


def parse(text: str | bytes) -> InboundEvent | None:
    """Parse one WebSocket message from Twilio; None for events Voxline ignores."""
    try:
        data = _decode(text)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("not a JSON object")
    event = data.get("event")
    try:
        if event == "media":
            media = _obj(data, "media")
            payload = base64.b64decode(media["payload"], validate=True)
            return Media(
                payload, int(media.get("chunk", 0)), int(media.get("timestamp", 0)), str(media.get("track", "inbound"))
            )
        if event == "mark":
            return MarkEcho(str(_obj(data, "mark")["name"]))
        if event == "start":
            start = _obj(data, "start")
            fmt = start.get("mediaFormat") or {}
            params = start.get("customParameters") or {}
            return Start(
                stream_sid=str(start.get("streamSid") or data["streamSid"]),
                call_sid=str(start["callSid"]),
                account_sid=str(start.get("accountSid", "")),
                custom_parameters={str(k): str(v) for k, v in params.items()},
                encoding=str(fmt.get("encoding", "audio/x-mulaw")),
                sample_rate=int(fmt.get("sampleRate", 8000)),
            )
        if event == "connected":
            return Connected(str(data.get("protocol", "")))
        if event == "dtmf":
            return DtmfDigit(str(_obj(data, "dtmf")["digit"]))
        if event == "stop":
            stop = data.get("stop") or {}
            return Stop(str(stop.get("callSid", "")))
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ProtocolError(f"malformed {event!r} event: {exc!r}") from None
    return None


class TwilioSerializer:
    """Builds the messages Voxline sends on one stream."""

    def __init__(self, stream_sid: str) -> None:
        self.stream_sid = stream_sid

    def media(self, mulaw: bytes) -> str:
        payload = base64.b64encode(mulaw).decode("ascii")
        return f'{{"event":"media","streamSid":"{self.stream_sid}","media":{{"payload":"{payload}"}}}}'

    def mark(self, name: str) -> str:
        return _encode({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}).decode()

    def clear(self) -> str:
        return _encode({"event": "clear", "streamSid": self.stream_sid}).decode()
