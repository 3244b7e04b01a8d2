"""Encoding of bus messages. One decoder for the whole contract: the tag says the type."""

from __future__ import annotations

import msgspec

from proto.messages import Message

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Message] = msgspec.json.Decoder(Message)


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes) -> Message:
    """Raise msgspec.ValidationError / DecodeError on anything outside the contract."""
    return _decoder.decode(data)
