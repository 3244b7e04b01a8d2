"""Lost and repeated reply audio, from the playback model's chunk identities (the mark
that follows each chunk places it inside its sentence)."""

from __future__ import annotations

import pytest

from voxline.simulator.coverage import estimate_heard_words, turn_coverage
from voxline.simulator.playback import PlaybackBuffer

CHUNK = bytes([0x00]) * 800  # 100 ms


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def send(buf: PlaybackBuffer, *marks: str) -> None:
    for name in marks:
        buf.add_audio(CHUNK)
        buf.add_mark(name)


def names(buf: PlaybackBuffer) -> list[str]:
    return [m.name for m in buf.marks]


def test_a_reply_played_through_loses_and_repeats_nothing() -> None:
    clock = Clock()
    buf = PlaybackBuffer(clock)
    send(buf, "t2.s0.c0.e100", "t2.s0.c1.e200.S", "t2.s1.c0.e100.S.T")
    clock.t = 1.0
    cov = turn_coverage(2, buf.played(), names(buf))
    assert cov.lost_ms == pytest.approx(0.0) and cov.repeated_ms == pytest.approx(0.0)
    assert cov.by_sentence() == {0: (200.0, 200.0), 1: (100.0, 100.0)}


def test_pause_then_resume_from_the_last_echoed_mark_repeats_the_partly_played_chunk() -> None:
    clock = Clock()
    buf = PlaybackBuffer(clock)
    send(buf, "t2.s0.c0.e100", "t2.s0.c1.e200", "t2.s0.c2.e300.S.T")
    clock.t = 0.140  # c0 played, 40 ms of c1: the caller says "uh-huh", the gateway clears
    buf.clear()
    clock.t = 0.600  # resume from the last confirmed mark: c1 and c2 again
    send(buf, "t2.s0.c1.e200", "t2.s0.c2.e300.S.T")
    clock.t = 2.0
    cov = turn_coverage(2, buf.played(), names(buf))
    assert cov.repeated_ms == pytest.approx(40.0)
    assert cov.lost_ms == pytest.approx(0.0)


def test_resuming_after_the_unplayed_audio_loses_it() -> None:
    clock = Clock()
    buf = PlaybackBuffer(clock)
    send(buf, "t2.s0.c0.e100", "t2.s0.c1.e200", "t2.s0.c2.e300.S.T")
    clock.t = 0.150
    buf.clear()
    clock.t = 0.600
    send(buf, "t2.s0.c2.e300.S.T")  # c1's last 50 ms never come back
    clock.t = 2.0
    cov = turn_coverage(2, buf.played(), names(buf))
    assert cov.lost_ms == pytest.approx(50.0)
    assert cov.repeated_ms == pytest.approx(0.0)


def test_audio_cleared_before_its_mark_is_not_credited_to_the_next_mark() -> None:
    clock = Clock()
    buf = PlaybackBuffer(clock)
    buf.add_audio(CHUNK)  # its mark never comes: cleared first
    buf.clear()
    send(buf, "t3.s0.c0.e100.S.T")
    clock.t = 2.0
    played = buf.played()
    assert [c.mark for c in played] == ["t3.s0.c0.e100.S.T"]
    assert turn_coverage(3, played, names(buf)).repeated_ms == 0.0


def test_heard_words_follow_the_orchestrators_rule() -> None:
    text = "You said hello. This is the test agent."
    assert estimate_heard_words(text, {0: (900.0, 900.0), 1: (600.0, 1200.0)}) == 3 + 2
    assert estimate_heard_words(text, {0: (450.0, 900.0)}) == 1
    assert estimate_heard_words(text, {}) == 0
