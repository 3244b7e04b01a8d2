"""How much of the chunks a `clear` dropped the caller had already heard."""

from __future__ import annotations

from proto import AudioFrame, MarkName
from services.gateway.playback_position import DRY_BUFFER_MARGIN_MS, unplayed

CHUNK = 800  # 100 ms of 8 kHz mu-law


def chunks(n: int, sent_us: int = 0) -> list[tuple[AudioFrame, MarkName, int]]:
    return [
        (AudioFrame(bytes([i]) * CHUNK, turn_id=2, seq=0, chunk=i), MarkName(2, 0, i, (i + 1) * 100), sent_us + i)
        for i in range(n)
    ]


def test_the_part_played_since_the_last_echo_is_not_sent_again() -> None:
    sent = chunks(4, sent_us=1_000_000)  # all queued at Twilio at once, as TTS is faster than speech
    # Chunk 0's echo came at 1.1 s, so chunk 1 started then; the pause is 35 ms into it.
    left = unplayed(sent[1:], last_echo_us=1_100_000, cleared_us=1_135_000)
    assert [len(f.payload) for f, _ in left] == [CHUNK - 280, CHUNK, CHUNK]
    assert left[0][0].payload == sent[1][0].payload[280:]  # the tail of chunk 1, then all of 2 and 3
    assert [m for _, m in left] == [m for _, m, _ in sent[1:]]  # every mark still goes out


def test_more_played_than_one_chunk_keeps_the_mark_without_its_audio() -> None:
    sent = chunks(3)  # chunk 0's own echo is still in flight; an older one came at 1 s
    left = unplayed(sent, last_echo_us=1_000_000, cleared_us=1_150_000)  # all of chunk 0, half of 1
    assert [len(f.payload) for f, _ in left] == [0, CHUNK - 400, CHUNK]


def test_a_dry_buffer_errs_towards_repeating() -> None:
    # The previous reply's last echo was long ago: this reply's first chunk started on arrival.
    sent = chunks(2, sent_us=5_000_000)
    left = unplayed(sent, last_echo_us=0, cleared_us=5_060_000)
    heard_samples = int((60 - DRY_BUFFER_MARGIN_MS) * 8)
    assert len(left[0][0].payload) == CHUNK - heard_samples


def test_nothing_played_yet_is_nothing_cut() -> None:
    sent = chunks(2, sent_us=10)
    assert unplayed(sent, last_echo_us=0, cleared_us=10) == [(f, m) for f, m, _ in sent]
    assert unplayed([], last_echo_us=0, cleared_us=10) == []
