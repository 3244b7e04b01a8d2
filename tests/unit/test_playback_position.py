"""How much of the chunks a `clear` dropped the caller had already heard."""

from __future__ import annotations

from proto import AudioFrame, MarkName
from services.gateway.playback_position import DRY_BUFFER_MARGIN_MS, PlaybackPosition

CHUNK = 800  # 100 ms of 8 kHz mu-law


def chunks(n: int) -> list[tuple[AudioFrame, MarkName]]:
    return [
        (AudioFrame(bytes([i]) * CHUNK, turn_id=2, seq=0, chunk=i), MarkName(2, 0, i, (i + 1) * 100)) for i in range(n)
    ]


def test_the_part_played_since_the_last_echo_is_not_sent_again() -> None:
    pos = PlaybackPosition()
    sent = chunks(4)
    for i, (_, mark) in enumerate(sent):
        pos.sent(mark, 1_000_000 + i)  # all queued at Twilio at once, as TTS is faster than speech
    pos.echoed(sent[0][1], 1_100_000)  # chunk 0 played; chunk 1 started then
    left = pos.unplayed(sent[1:], cleared_us=1_135_000)  # 35 ms into chunk 1
    assert [len(f.payload) for f, _ in left] == [CHUNK - 280, CHUNK, CHUNK]
    assert left[0][0].payload == sent[1][0].payload[280:]  # the tail of chunk 1, then all of 2 and 3
    assert [m for _, m in left] == [m for _, m in sent[1:]]  # every mark still goes out


def test_more_played_than_one_chunk_keeps_the_mark_without_its_audio() -> None:
    pos = PlaybackPosition()
    sent = chunks(3)
    for _, mark in sent:
        pos.sent(mark, 0)
    pos.echoed(MarkName(2, 0, 99, 0), 1_000_000)  # an older echo; chunk 0's own echo is still in flight
    left = pos.unplayed(sent, cleared_us=1_150_000)  # 150 ms: all of chunk 0, half of chunk 1
    assert [len(f.payload) for f, _ in left] == [0, CHUNK - 400, CHUNK]


def test_a_dry_buffer_errs_towards_repeating() -> None:
    pos = PlaybackPosition()
    pos.echoed(MarkName(1, 0, 0, 100, True, True), 0)  # the previous reply, long ago
    sent = chunks(2)
    pos.sent(sent[0][1], 5_000_000)  # the first chunk of this reply started on arrival
    left = pos.unplayed(sent, cleared_us=5_060_000)
    heard_samples = int((60 - DRY_BUFFER_MARGIN_MS) * 8)
    assert len(left[0][0].payload) == CHUNK - heard_samples


def test_nothing_known_is_nothing_cut() -> None:
    pos = PlaybackPosition()
    sent = chunks(2)
    assert pos.unplayed(sent, cleared_us=10) == sent  # never sent through this tracker
    assert pos.unplayed([], cleared_us=10) == []
