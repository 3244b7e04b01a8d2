"""What an STT provider must offer the worker.

A session is opened per call and fed the caller's 20 ms frames in arrival order; it
reports what it hears through `emit` whenever it knows it, so a provider with its own
network stream (Deepgram) and one that decides locally (fake, Whisper + VAD) fit alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from proto.audio_frame import AudioFrame
from proto.messages import Message, SttAssign
from services.providers import Provider

Emit = Callable[[Message], Awaitable[None]]
"""Publishes SpeechStarted / Transcript / SpeechEnded / SttError for the session's call."""


class SttSession(Protocol):
    async def feed(self, frame: AudioFrame) -> None:
        """Take one frame of 8 kHz mu-law caller audio (usually 160 bytes = 20 ms)."""
        ...

    async def close(self) -> None:
        """Stop listening and release everything; nothing is emitted afterwards."""
        ...


class SttProvider(Provider, Protocol):
    async def open(self, assign: SttAssign, emit: Emit) -> SttSession: ...
