"""Twilio Media Streams (bidirectional) wire format, in one place.

Twilio's own description of every message, field by field, is "Media Streams - WebSocket
Messages": https://www.twilio.com/docs/voice/media-streams/websocket-messages

Inbound events: connected, start, media, mark, dtmf, stop, each a JSON text frame whose
`event` field says which. They are msgspec structs tagged on `event` and decoded by one
`Decoder(InboundEvent)`: the JSON is parsed, checked and turned into the right struct in a
single pass, with no dict in between, because the media event arrives 50 times a second
per call. Twilio sends numbers as strings (`"chunk": "3"`), hence `strict=False`, which
lets msgspec read them as ints. The base64 audio is a `bytes` field: msgspec decodes it and
rejects anything that is not valid base64.

Outbound (media, mark, clear) are structs too, so a stream sid or mark name can never
break the JSON. `TwilioSerializer` is the one object the media stream talks to, both ways.
"""

from __future__ import annotations

import msgspec

# --- inbound: what Twilio sends ------------------------------------------------------


class ProtocolError(ValueError):
    """A message from Twilio that does not parse; the text is fit for the log."""


class _Inbound(msgspec.Struct, frozen=True, tag_field="event", rename="camel", gc=False):
    """Base of the inbound events: tagged on Twilio's `event` field, camelCase on the wire."""


class MediaFormat(msgspec.Struct, frozen=True, rename="camel", gc=False):
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000
    channels: int = 1


class StreamMetadata(msgspec.Struct, frozen=True, rename="camel", gc=False):
    """The `start` object: which call this stream belongs to, and how its audio is coded."""

    stream_sid: str
    call_sid: str
    account_sid: str = ""
    custom_parameters: dict[str, str] = {}  # the TwiML <Parameter>s: agent id, stream token
    media_format: MediaFormat = MediaFormat()


class MediaChunk(msgspec.Struct, frozen=True, gc=False):
    payload: bytes  # base64 on the wire; 20 ms of 8 kHz mu-law from the caller
    track: str = "inbound"
    chunk: int = 0  # counts the stream's media messages from 1
    timestamp: int = 0  # ms since the stream started


class MarkLabel(msgspec.Struct, frozen=True, gc=False):
    name: str


class DtmfDigit(msgspec.Struct, frozen=True, gc=False):
    digit: str
    track: str = "inbound_track"


class StopMetadata(msgspec.Struct, frozen=True, rename="camel", gc=False):
    account_sid: str = ""
    call_sid: str = ""


class Connected(_Inbound, tag="connected", frozen=True):
    protocol: str = ""
    version: str = ""


class Start(_Inbound, tag="start", frozen=True):
    start: StreamMetadata


class Media(_Inbound, tag="media", frozen=True):
    media: MediaChunk


class MarkEcho(_Inbound, tag="mark", frozen=True):
    """Twilio's echo of a mark we sent: playback reached it (or a `clear` flushed it)."""

    mark: MarkLabel


class Dtmf(_Inbound, tag="dtmf", frozen=True):
    dtmf: DtmfDigit


class Stop(_Inbound, tag="stop", frozen=True):
    stop: StopMetadata = StopMetadata()


InboundEvent = Connected | Start | Media | MarkEcho | Dtmf | Stop

KNOWN_EVENTS = frozenset(str(t.__struct_config__.tag) for t in (Connected, Start, Media, MarkEcho, Dtmf, Stop))


class _Envelope(msgspec.Struct, gc=False):
    """Only read when the typed decode failed: was it an event we ignore, or a broken one?"""

    event: str


# --- outbound: what Voxline sends ----------------------------------------------------


class _Outbound(msgspec.Struct, frozen=True, tag_field="event", rename="camel", gc=False):
    stream_sid: str


class _Payload(msgspec.Struct, frozen=True, gc=False):
    payload: bytes  # msgspec writes bytes as base64, which is what Twilio expects


class _OutboundMedia(_Outbound, tag="media", frozen=True):
    media: _Payload


class _OutboundMark(_Outbound, tag="mark", frozen=True):
    mark: MarkLabel


class _Clear(_Outbound, tag="clear", frozen=True):
    pass


_decoder: msgspec.json.Decoder[InboundEvent] = msgspec.json.Decoder(InboundEvent, strict=False)
_envelope = msgspec.json.Decoder(_Envelope)
_encoder = msgspec.json.Encoder()


class TwilioSerializer:
    """Both directions of one stream: `deserialize` what Twilio sends, and build the media,
    mark and clear messages Voxline sends on this stream (they all carry its stream sid)."""

    def __init__(self, stream_sid: str) -> None:
        self.stream_sid = stream_sid
        self._clear = _encoder.encode(_Clear(stream_sid)).decode()

    @staticmethod
    def deserialize(text: str | bytes) -> InboundEvent | None:
        """One WebSocket message from Twilio; None for an event Voxline does not use (Twilio
        may add some); `ProtocolError` for anything malformed."""
        # msgspec raises RecursionError on deeply nested JSON (`[[[[...`, even in a field
        # it skips): a peer's bad message like any other, not a crash of the stream.
        try:
            return _decoder.decode(text)
        except msgspec.ValidationError as exc:
            problem = str(exc)
        except msgspec.DecodeError as exc:
            raise ProtocolError(f"not JSON: {exc}") from None
        except RecursionError:
            raise ProtocolError("JSON nested too deeply") from None
        try:
            event = _envelope.decode(text).event
        except msgspec.DecodeError:
            raise ProtocolError(f"not a Twilio event: {problem}") from None
        except RecursionError:
            raise ProtocolError("JSON nested too deeply") from None
        if event not in KNOWN_EVENTS:
            return None
        raise ProtocolError(f"malformed {event!r} event: {problem}")

    def media(self, mulaw: bytes) -> str:
        return _encoder.encode(_OutboundMedia(self.stream_sid, _Payload(mulaw))).decode()

    def mark(self, name: str) -> str:
        return _encoder.encode(_OutboundMark(self.stream_sid, MarkLabel(name))).decode()

    def clear(self) -> str:
        return self._clear
