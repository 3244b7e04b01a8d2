"""Twilio Media Streams wire format, seen from Twilio's side of the socket.

The simulator must be indistinguishable from Twilio to the gateway, so every message is
shaped exactly like Twilio's (string-valued counters, `streamSid` on everything but
`connected`, `start` carrying the TwiML <Parameter>s as `customParameters`). The parsers
for the other direction exist so tests and fake gateways can speak the same dialect.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import msgspec

from voxline.audio import TELEPHONY_RATE

MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": TELEPHONY_RATE, "channels": 1}


class ProtocolError(ValueError):
    """A frame that Twilio (or a gateway) would not have produced."""


def new_sid(prefix: str) -> str:
    """Twilio SIDs are a two-letter type prefix plus 32 hex digits."""
    return prefix + secrets.token_hex(16)


@dataclass(frozen=True)
class StreamTarget:
    """Where <Connect><Stream> told Twilio to connect, and what to pass along; `action` is
    the <Connect action> Twilio requests when the stream ends with the caller on the line."""

    url: str
    parameters: dict[str, str] = field(default_factory=dict)
    action: str = ""


def _response(xml_text: str) -> ET.Element:
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise ProtocolError(f"TwiML is not XML: {exc}") from exc
    if root.tag != "Response":
        raise ProtocolError(f"TwiML root is <{root.tag}>, not <Response>")
    return root


def twiml_verbs(xml_text: str) -> list[tuple[str, str]]:
    """The verbs of a TwiML reply that has no stream, with their text (`<Say>`'s words,
    `<Dial>`'s number): what Twilio would do next on the call."""
    root = _response(xml_text)
    return [(child.tag, "".join(child.itertext()).strip()) for child in root]


def parse_twiml(xml_text: str, base_url: str | None = None) -> StreamTarget:
    """Find the bidirectional stream in a TwiML reply.

    Only <Connect><Stream> counts: <Start><Stream> is one-way, so a gateway answering with
    it could never talk back, and the simulator should say so rather than connect.
    """
    root = _response(xml_text)
    stream = root.find("./Connect/Stream")
    if stream is None:
        verbs = ", ".join(f"<{child.tag}>" for child in root) or "nothing"
        raise ProtocolError(f"TwiML has no <Connect><Stream> (it has {verbs})")
    url = stream.get("url")
    if not url:
        raise ProtocolError("<Stream> has no url")
    if base_url is not None and not urlsplit(url).scheme:
        url = _ws_scheme(urljoin(base_url, url))
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter") if p.get("name")}
    connect = root.find("./Connect")
    action = connect.get("action", "") if connect is not None else ""
    if action and base_url is not None and not urlsplit(action).scheme:
        action = urljoin(base_url, action)
    return StreamTarget(url=url, parameters=parameters, action=action)


def _ws_scheme(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, *parts[1:]))


class TwilioStream:
    """Builds the messages Twilio sends for one stream, keeping its counters honest.

    `sequenceNumber` counts every message after `connected` from 1; `chunk` counts media
    messages from 1. Gateways may check both, so they are owned here and nowhere else.
    """

    def __init__(self, call_sid: str, account_sid: str, stream_sid: str | None = None) -> None:
        self.call_sid = call_sid
        self.account_sid = account_sid
        self.stream_sid = stream_sid or new_sid("MZ")
        self._sequence = 0
        self._chunk = 0

    def _next_sequence(self) -> str:
        self._sequence += 1
        return str(self._sequence)

    @property
    def chunks_sent(self) -> int:
        return self._chunk

    def connected(self) -> dict[str, Any]:
        return {"event": "connected", "protocol": "Call", "version": "1.0.0"}

    def start(self, custom_parameters: dict[str, str]) -> dict[str, Any]:
        return {
            "event": "start",
            "sequenceNumber": self._next_sequence(),
            "start": {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "mediaFormat": dict(MEDIA_FORMAT),
                "customParameters": dict(custom_parameters),
            },
            "streamSid": self.stream_sid,
        }

    def media(self, payload: bytes, timestamp_ms: int) -> dict[str, Any]:
        self._chunk += 1
        return {
            "event": "media",
            "sequenceNumber": self._next_sequence(),
            "media": {
                "track": "inbound",
                "chunk": str(self._chunk),
                "timestamp": str(timestamp_ms),
                "payload": base64.b64encode(payload).decode("ascii"),
            },
            "streamSid": self.stream_sid,
        }

    def media_json(self, payload_b64: str, timestamp_ms: int) -> str:
        """`media()` already encoded, from a pre-encoded payload.

        At 200 concurrent calls the simulator sends 10,000 frames a second; building a dict
        and running base64 and json.dumps for each would make the load generator the
        bottleneck it is meant to measure. Same bytes on the wire as `encode(media(...))`.
        """
        self._chunk += 1
        self._sequence += 1
        return (
            f'{{"event":"media","sequenceNumber":"{self._sequence}","media":{{"track":"inbound",'
            f'"chunk":"{self._chunk}","timestamp":"{timestamp_ms}","payload":"{payload_b64}"}},'
            f'"streamSid":"{self.stream_sid}"}}'
        )

    def broken_media(self, timestamp_ms: int) -> dict[str, Any]:
        """A media event whose payload is not base64, to probe the gateway's input checks."""
        return {
            "event": "media",
            "sequenceNumber": self._next_sequence(),
            "media": {
                "track": "inbound",
                "chunk": str(self._chunk),
                "timestamp": str(timestamp_ms),
                "payload": "!!not*base64!!",
            },
            "streamSid": self.stream_sid,
        }

    def dtmf(self, digit: str) -> dict[str, Any]:
        return {
            "event": "dtmf",
            "streamSid": self.stream_sid,
            "sequenceNumber": self._next_sequence(),
            "dtmf": {"track": "inbound_track", "digit": digit},
        }

    def mark(self, name: str) -> dict[str, Any]:
        return {
            "event": "mark",
            "streamSid": self.stream_sid,
            "sequenceNumber": self._next_sequence(),
            "mark": {"name": name},
        }

    def stop(self) -> dict[str, Any]:
        return {
            "event": "stop",
            "sequenceNumber": self._next_sequence(),
            "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            "streamSid": self.stream_sid,
        }


# msgspec, not json: the load generator must stay cheap beside 200 calls of the stack.
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def encode(message: dict[str, Any]) -> str:
    return _encoder.encode(message).decode()


@dataclass(frozen=True)
class GatewayMessage:
    """One message the gateway sent to "Twilio": media to play, a mark, or a clear."""

    event: str
    stream_sid: str
    payload: bytes = b""
    mark_name: str = ""


def _load(text: str | bytes) -> dict[str, Any]:
    if isinstance(text, bytes):
        raise ProtocolError("binary frame (Media Streams is JSON text only)")
    try:
        data = _decoder.decode(text)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"invalid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("event"), str):
        raise ProtocolError("message without an event")
    return data


def parse_gateway_message(text: str | bytes) -> GatewayMessage:
    """Validate a gateway message the way Twilio would, so a sloppy gateway is caught here."""
    data = _load(text)
    event = data["event"]
    stream_sid = data.get("streamSid")
    if not isinstance(stream_sid, str) or not stream_sid:
        raise ProtocolError(f"{event} without streamSid")
    if event == "media":
        payload = (data.get("media") or {}).get("payload")
        if not isinstance(payload, str):
            raise ProtocolError("media without media.payload")
        try:
            audio = base64.b64decode(payload, validate=True)
        except binascii.Error as exc:
            raise ProtocolError(f"media payload is not base64: {exc}") from exc
        return GatewayMessage(event, stream_sid, payload=audio)
    if event == "mark":
        name = (data.get("mark") or {}).get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError("mark without mark.name")
        return GatewayMessage(event, stream_sid, mark_name=name)
    if event == "clear":
        return GatewayMessage(event, stream_sid)
    raise ProtocolError(f"unknown event {event!r}")


def gateway_media(stream_sid: str, payload: bytes) -> dict[str, Any]:
    return {
        "event": "media",
        "streamSid": stream_sid,
        "media": {"payload": base64.b64encode(payload).decode("ascii")},
    }


def gateway_mark(stream_sid: str, name: str) -> dict[str, Any]:
    return {"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}


def gateway_clear(stream_sid: str) -> dict[str, Any]:
    return {"event": "clear", "streamSid": stream_sid}


def parse_twilio_message(text: str | bytes) -> dict[str, Any]:
    """Decode a Twilio-side message for tests and fake gateways; media payload becomes bytes."""
    data = _load(text)
    if data["event"] == "media":
        media = dict(data.get("media") or {})
        media["payload"] = base64.b64decode(media.get("payload", ""), validate=True)
        data = {**data, "media": media}
    return data
