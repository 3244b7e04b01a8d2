"""The media stream's writes to Twilio when a pause races a send: the gateway on a real
bus, its reply-audio and control handlers called as its subscriptions call them, and on
the other end of the WebSocket a stand-in for Twilio whose writes can be held up, as a
congested network does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from nats.aio.msg import Msg
from starlette.websockets import WebSocket

from proto import AudioFrame, FrameFlags
from proto.messages import PlaybackPause, PlaybackResume
from services.gateway.media_stream import MediaStream
from services.gateway.stream_token import StreamTokens
from services.gateway.twilio_protocol import TwilioSerializer
from voxline.bus import Bus
from voxline.config import GatewaySettings

CALL_ID = "CA0123456789abcdef0123456789abcdef"
CHUNK = 800  # 100 ms of 8 kHz mu-law


class TwilioSide:
    """Twilio's end of the media WebSocket: keeps every message the gateway writes. While
    `open` is clear, a write waits, as one does when the network backs up."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.open = asyncio.Event()
        self.open.set()
        self.writing = asyncio.Event()  # a write has begun

    async def send_text(self, text: str) -> None:
        self.writing.set()
        await self.open.wait()
        self.received.append(json.loads(text))

    def after_clear(self) -> list[str]:
        """The mark names written after the last `clear`."""
        events = [m["event"] for m in self.received]
        last_clear = len(events) - 1 - events[::-1].index("clear")
        return [m["mark"]["name"] for m in self.received[last_clear:] if m["event"] == "mark"]


@pytest.fixture
async def stream(worker_bus: Bus) -> AsyncIterator[tuple[MediaStream, TwilioSide, Msg]]:
    twilio = TwilioSide()
    media = MediaStream(cast(WebSocket, twilio), worker_bus, GatewaySettings(), StreamTokens("k" * 32, 60))
    media.call_id = CALL_ID  # what the start event sets
    media.serializer = TwilioSerializer("MZ1")
    yield media, twilio, Msg(_client=worker_bus.nc)


def chunk(n: int, flags: FrameFlags = FrameFlags.NONE) -> AudioFrame:
    return AudioFrame(bytes([n]) * CHUNK, turn_id=1, seq=0, chunk=n, flags=flags)


async def run_ready_tasks() -> None:
    """Let every task that can run do so until it blocks (no timer involved: each pass is
    one turn of the event loop)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_chunk_sent_while_a_pause_waits_is_held_and_replayed_on_resume(
    stream: tuple[MediaStream, TwilioSide, Msg],
) -> None:
    media, twilio, msg = stream
    await media._on_reply_frame(chunk(0), msg)
    # Chunk 1's write is held up on the way to Twilio...
    twilio.open.clear()
    twilio.writing.clear()
    sending = asyncio.create_task(media._on_reply_frame(chunk(1), msg))
    await twilio.writing.wait()
    # ...when the caller says "uh-huh": the pause has to wait for that write to finish.
    pausing = asyncio.create_task(media._on_control(PlaybackPause(call_id=CALL_ID, turn_id=1, at_us=0), msg))
    await run_ready_tasks()
    assert not pausing.done() and "clear" not in [m["event"] for m in twilio.received]
    twilio.open.set()
    await sending
    await pausing
    # Twilio dropped chunks 0 and 1 on `clear`; the caller heard neither (no echo came).
    await media._on_control(PlaybackResume(call_id=CALL_ID, turn_id=1, at_us=0), msg)
    assert twilio.after_clear() == ["t1.s0.c0.e100", "t1.s0.c1.e200"]


async def test_a_chunk_arriving_while_a_pause_waits_is_held_not_played_over_the_caller(
    stream: tuple[MediaStream, TwilioSide, Msg],
) -> None:
    media, twilio, msg = stream
    twilio.open.clear()
    sending = asyncio.create_task(media._on_reply_frame(chunk(0), msg))
    await twilio.writing.wait()
    pausing = asyncio.create_task(media._on_control(PlaybackPause(call_id=CALL_ID, turn_id=1, at_us=0), msg))
    await run_ready_tasks()
    arriving = asyncio.create_task(media._on_reply_frame(chunk(1, FrameFlags.END_OF_SENTENCE), msg))
    await run_ready_tasks()
    twilio.open.set()
    await asyncio.gather(sending, pausing, arriving)
    # Chunk 0 went out, the pause cleared it, and chunk 1 did not play over the caller.
    assert [m["event"] for m in twilio.received] == ["media", "mark", "clear"]
    await media._on_control(PlaybackResume(call_id=CALL_ID, turn_id=1, at_us=0), msg)
    assert twilio.after_clear() == ["t1.s0.c0.e100", "t1.s0.c1.e200.S"]
