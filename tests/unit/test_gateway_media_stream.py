"""The media stream's writes to Twilio and its reports of what the caller heard: the gateway
on a real bus, its reply-audio, control and mark-echo handlers called as its subscriptions
and receive loop call them, and on the other end of the WebSocket a stand-in for Twilio:
the simulator's playback model (audio plays at 8000 samples/s on a clock the test moves,
marks come back when playback reaches them, a `clear` sends back every outstanding mark),
whose writes can be held up, as a congested network does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from nats.aio.msg import Msg
from starlette.websockets import WebSocket

from proto import AudioFrame, FrameFlags, subjects
from proto.messages import MarkPlayed, PlaybackPause, PlaybackResume, TurnCancel
from services.gateway.call_outcomes import SEND_STALLED
from services.gateway.media_stream import MediaStream
from services.gateway.stream_token import StreamTokens
from services.gateway.twilio_protocol import TwilioSerializer
from tests.unit.bus_probe import Probe
from voxline.bus import Bus
from voxline.config import GatewaySettings
from voxline.simulator.playback import PendingMark, PlaybackBuffer
from voxline.simulator.twilio_stream import parse_gateway_message

CALL_ID = "CA0123456789abcdef0123456789abcdef"
CHUNK = 800  # 100 ms of 8 kHz mu-law


class Clock:
    """Microseconds, moved by the test: the gateway's clock and Twilio's playback clock."""

    def __init__(self) -> None:
        self.us = 1_000_000

    def __call__(self) -> int:
        return self.us


class TwilioSide:
    """Twilio's end of the media WebSocket. While `open` is clear, a write waits, as one
    does when the network backs up. The marks Twilio sends back wait in `echoes` until the
    test delivers them, so one can still be on the wire when the gateway sends `clear`."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.playback = PlaybackBuffer(lambda: clock.us / 1e6)
        self.received: list[dict[str, Any]] = []
        self.echoes: list[str] = []
        self.open = asyncio.Event()
        self.open.set()
        self.writing = asyncio.Event()  # a write has begun

    async def send_text(self, text: str) -> None:
        self.writing.set()
        await self.open.wait()
        msg = parse_gateway_message(text)  # what Twilio would refuse fails the test here
        self.received.append(json.loads(text))
        if msg.event == "media":
            self.playback.add_audio(msg.payload)
        elif msg.event == "mark":
            self._send_back(self.playback.add_mark(msg.mark_name))
        else:
            self._send_back(self.playback.clear())

    def _send_back(self, marks: list[PendingMark]) -> None:
        self.echoes += [m.name for m in marks]

    def play_until(self, us: int) -> None:
        """Time passes: the marks playback reaches go on the wire back to the gateway."""
        self.clock.us = us
        self._send_back(self.playback.due_marks())

    async def deliver(self, media: MediaStream) -> None:
        """The marks on the wire reach the gateway's receive loop."""
        echoes, self.echoes = self.echoes, []
        for name in echoes:
            await media._on_mark_echo(name)

    def after_clear(self) -> list[str]:
        """The mark names written after the last `clear`."""
        events = [m["event"] for m in self.received]
        last_clear = len(events) - 1 - events[::-1].index("clear")
        return [m["mark"]["name"] for m in self.received[last_clear:] if m["event"] == "mark"]

    def heard_ms(self, turn_id: int) -> list[tuple[float, float]]:
        """Which stretches of the turn's single sentence the caller heard, in order, in ms
        from its start: every chunk's mark places it in the sentence."""
        spans: list[tuple[float, float]] = []
        for c in self.playback.played(now=1e9):
            if c.turn_id == turn_id and c.sentence_end_ms is not None:
                start = c.sentence_end_ms - c.samples / 8
                spans.append((round(start, 3), round(start + c.duration * 1000, 3)))
        return spans


@pytest.fixture
async def stream(worker_bus: Bus) -> AsyncIterator[tuple[MediaStream, TwilioSide, Msg]]:
    clock = Clock()
    twilio = TwilioSide(clock)
    tokens = StreamTokens("k" * 32, 60)
    media = MediaStream(cast(WebSocket, twilio), worker_bus, GatewaySettings(), tokens, clock=clock)
    media.call_id = CALL_ID  # what the start event sets
    media.serializer = TwilioSerializer("MZ1")
    yield media, twilio, Msg(_client=worker_bus.nc)


def chunk(n: int, flags: FrameFlags = FrameFlags.NONE, turn: int = 1) -> AudioFrame:
    return AudioFrame(bytes([n]) * CHUNK, turn_id=turn, seq=0, chunk=n, flags=flags)


async def run_ready_tasks() -> None:
    """Let every task that can run do so until it blocks (no timer involved: each pass is
    one turn of the event loop)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def reported(probe: Probe, bus: Bus, turn_id: int) -> list[tuple[int, int]]:
    """(chunk, end_ms) of each MarkPlayed the gateway published for the turn, in order."""
    await probe.caught_up(bus)
    events = [s.item for s in probe.received() if s.subject == subjects.gateway_events(CALL_ID)]
    return [(m.chunk, m.end_ms) for m in events if isinstance(m, MarkPlayed) and m.turn_id == turn_id]


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


async def pause_as_chunk_1_plays_out(media: MediaStream, twilio: TwilioSide, msg: Msg) -> None:
    """Chunks 0-2 go out at 1.0 s; chunk 0's echo is in at 1.1 s; chunk 1 plays out at 1.2 s
    but its echo is still on the wire when the caller's sound pauses the reply at 1.25 s;
    then the echoes Twilio sent, before and because of the `clear`, come in."""
    for n in range(3):
        await media._on_reply_frame(chunk(n, FrameFlags.END_OF_SENTENCE if n == 2 else FrameFlags.NONE), msg)
    twilio.play_until(1_100_000)
    await twilio.deliver(media)
    twilio.play_until(1_200_000)
    twilio.clock.us = 1_250_000
    await media._on_control(PlaybackPause(call_id=CALL_ID, turn_id=1, at_us=0), msg)
    assert twilio.echoes == ["t1.s0.c1.e200", "t1.s0.c2.e300.S"]  # played, flushed: alike
    await twilio.deliver(media)


async def test_audio_heard_before_a_clear_counts_though_its_echo_came_after(
    stream: tuple[MediaStream, TwilioSide, Msg], probe: Probe, worker_bus: Bus
) -> None:
    media, twilio, msg = stream
    await pause_as_chunk_1_plays_out(media, twilio, msg)
    # The caller goes on talking: an interruption. What they heard is all of chunks 0 and
    # 1 and the first 50 ms of chunk 2, reported at the clear (the orchestrator's history).
    await media._on_control(TurnCancel(call_id=CALL_ID, turn_id=1, reason="interrupted", at_us=0), msg)
    assert await reported(probe, worker_bus, 1) == [(0, 100), (1, 200), (2, 250)]


async def test_a_resume_neither_repeats_nor_skips_what_the_caller_heard(
    stream: tuple[MediaStream, TwilioSide, Msg], probe: Probe, worker_bus: Bus
) -> None:
    media, twilio, msg = stream
    await pause_as_chunk_1_plays_out(media, twilio, msg)
    twilio.clock.us = 1_400_000  # it was an "uh-huh"
    await media._on_control(PlaybackResume(call_id=CALL_ID, turn_id=1, at_us=0), msg)
    twilio.play_until(2_000_000)
    await twilio.deliver(media)
    assert twilio.heard_ms(1) == [(0, 100), (100, 200), (200, 250), (250, 300)]
    assert await reported(probe, worker_bus, 1) == [(0, 100), (1, 200), (2, 250), (2, 300)]


async def test_a_cancel_keeps_the_newer_turn_already_on_its_way_to_twilio(
    stream: tuple[MediaStream, TwilioSide, Msg], probe: Probe, worker_bus: Bus
) -> None:
    media, twilio, msg = stream
    await media._on_reply_frame(chunk(0, FrameFlags.END_OF_SENTENCE | FrameFlags.END_OF_TURN), msg)
    # Turn 2's audio reaches the gateway before turn 1's cancel does (another publisher,
    # another subscription): it queues at Twilio behind turn 1's.
    twilio.clock.us = 1_020_000
    await media._on_reply_frame(chunk(0, turn=2), msg)
    await media._on_reply_frame(chunk(1, FrameFlags.END_OF_SENTENCE | FrameFlags.END_OF_TURN, turn=2), msg)
    twilio.clock.us = 1_050_000
    await media._on_control(TurnCancel(call_id=CALL_ID, turn_id=1, reason="interrupted", at_us=0), msg)
    # The clear threw away turn 2's audio too: it goes out again, with the same marks.
    assert twilio.after_clear() == ["t2.s0.c0.e100", "t2.s0.c1.e200.S.T"]
    await twilio.deliver(media)  # the three marks the clear sent back: nothing heard
    assert await reported(probe, worker_bus, 2) == []
    twilio.play_until(1_300_000)
    await twilio.deliver(media)  # the resent marks' echoes are not taken for flushed ones
    assert twilio.heard_ms(2) == [(0, 100), (100, 200)]
    assert await reported(probe, worker_bus, 2) == [(0, 100), (1, 200)]


async def test_a_replaced_owner_s_cancel_is_dropped(
    stream: tuple[MediaStream, TwilioSide, Msg], probe: Probe, worker_bus: Bus
) -> None:
    media, twilio, msg = stream
    await media._on_reply_frame(chunk(0), msg)
    # The new owner (epoch 2) was heard from first; the old one wakes from a pause and cancels.
    await media._on_control(PlaybackResume(call_id=CALL_ID, turn_id=1, at_us=0, epoch=2), msg)
    await media._on_control(TurnCancel(call_id=CALL_ID, turn_id=1, reason="stale", at_us=0, epoch=1), msg)
    assert "clear" not in [m["event"] for m in twilio.received]  # the caller still hears turn 1
    await media._on_control(TurnCancel(call_id=CALL_ID, turn_id=1, reason="barge_in", at_us=0, epoch=2), msg)
    assert "clear" in [m["event"] for m in twilio.received]  # the owner's own cancel is obeyed


async def test_a_stalled_write_closes_the_stream_as_broken_and_a_cancel_does_not_wait_behind_it(
    stream: tuple[MediaStream, TwilioSide, Msg],
) -> None:
    media, twilio, msg = stream
    media.settings = GatewaySettings(ws_send_timeout_s=0.2)
    twilio.open.clear()  # the link to Twilio is stuck: this write never completes
    sending = asyncio.create_task(media._on_reply_frame(chunk(0), msg))
    await twilio.writing.wait()
    # The caller barges in: the cancel needs the send lock the stuck write holds. Bounded so
    # that a cancel waiting forever fails the test instead of hanging it.
    await asyncio.wait_for(media._cancel(1), 10)
    await asyncio.wait_for(sending, 10)
    assert media.close_reason == SEND_STALLED and media.close_code == 1011
    assert not twilio.received  # nothing half-written counts as sent
