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
