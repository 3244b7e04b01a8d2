"""The simulated phone line's tasks end when cancelled, even when the cancel lands as they
are woken. On Python 3.11 `asyncio.wait_for` loses such a cancel (CPython gh-86296): the
player looped on, `hang_up()` waited for it for good, and the Twilio REST emulator's redirect,
which hangs the line up before answering, timed out (test_twilio_callbacks failed in CI:
'transfer failed' instead of 'transferred')."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

from voxline.simulator.line import PhoneLine
from voxline.simulator.twilio_stream import TwilioStream, gateway_mark, gateway_media


async def test_the_player_ends_when_cancelled_as_a_message_wakes_it() -> None:
    stream = TwilioStream("CA" + "1" * 32, "AC" + "2" * 32, stream_sid="MZ" + "3" * 32)
    line = PhoneLine(cast(Any, None), stream)  # the player touches the socket only to echo a due mark
    line._handle(json.dumps(gateway_media(stream.stream_sid, b"\xff" * 8000)))  # one second of audio
    line._handle(json.dumps(gateway_mark(stream.stream_sid, "vx:1:0:end")))  # echoed once it has played
    player = asyncio.create_task(line._player())
    for _ in range(3):
        await asyncio.sleep(0)  # the player now waits, with a timeout: its mark is due in a second
    assert line.playback.next_due() is not None and not player.done()

    line._wake_player.set()  # a gateway message arrives ...
    player.cancel()  # ... as hang_up cancels the player
    try:
        async with asyncio.timeout(2.0):
            await asyncio.gather(player, return_exceptions=True)
    except TimeoutError:
        player.cancel()
        raise AssertionError("the player lost its cancel and went on playing") from None
    assert player.cancelled()


async def test_a_waiting_caller_hears_out_a_reply_that_goes_on_after_a_short_gap() -> None:
    """The caller speaks after `quiet_s` of the agent's silence, not a fixed time after the
    reply's audio first stopped: the rest of a reply said after a failover's gap is heard."""
    stream = TwilioStream("CA" + "4" * 32, "AC" + "5" * 32, stream_sid="MZ" + "6" * 32)
    line = PhoneLine(cast(Any, None), stream)
    t0 = line.clock()
    line._handle(json.dumps(gateway_media(stream.stream_sid, b"\xff" * 1600)))  # 0.2 s, then quiet

    def continuation() -> None:
        line._handle(json.dumps(gateway_media(stream.stream_sid, b"\xff" * 1600)))
        line._changed.set()  # as the receiver does for every gateway message

    asyncio.get_running_loop().call_later(0.3, continuation)  # well inside the caller's 1 s pause
    assert await line.wait_silence(1.0, timeout=10.0)
    ended = line.playback.playing_until()
    assert ended is not None and ended >= t0 + 0.5  # the continuation was queued
    assert line.clock() >= ended + 1.0  # and the caller waited for its end, then the pause
    assert await line.wait_silence(0.0, timeout=0.1)  # already quiet: no wait


async def test_wait_silence_gives_up_at_its_timeout_while_the_agent_talks() -> None:
    stream = TwilioStream("CA" + "7" * 32, "AC" + "8" * 32, stream_sid="MZ" + "9" * 32)
    line = PhoneLine(cast(Any, None), stream)
    line._handle(json.dumps(gateway_media(stream.stream_sid, b"\xff" * 80000)))  # 10 s of reply
    assert not await line.wait_silence(0.5, timeout=0.3)
