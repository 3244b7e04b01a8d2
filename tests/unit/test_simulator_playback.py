"""The playback model decides when marks are echoed, so its timing must be exact."""

from __future__ import annotations

import pytest

from voxline.simulator.playback import PlaybackBuffer, VoiceStop, measure_barge_in

FRAME = bytes([0x00]) * 160  # 20 ms of (loud) mu-law


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


def names(marks: list) -> list[str]:
    return [m.name for m in marks]


def test_mark_echoes_when_playback_reaches_it(clock: Clock) -> None:
    buf = PlaybackBuffer(clock)
    buf.add_audio(FRAME * 5)  # 100 ms
    assert buf.add_mark("t1.s0.c0.e100.S.T") == []
    assert buf.next_due() == pytest.approx(100.1)
    clock.t = 100.099
    assert buf.due_marks() == []
    clock.t = 100.1
    assert names(buf.due_marks()) == ["t1.s0.c0.e100.S.T"]
    assert buf.due_marks() == []  # echoed once only
    assert buf.next_due() is None


def test_mark_on_empty_buffer_echoes_at_once(clock: Clock) -> None:
    buf = PlaybackBuffer(clock)
    assert names(buf.add_mark("first")) == ["first"]
    buf.add_audio(FRAME)
    clock.t += 0.5  # the audio has long played out
    assert names(buf.add_mark("second")) == ["second"]


def test_audio_queues_behind_audio_and_restarts_after_a_gap(clock: Clock) -> None:
    buf = PlaybackBuffer(clock)
    a = buf.add_audio(FRAME)
    b = buf.add_audio(FRAME * 2)
    assert (a.start, a.end) == pytest.approx((100.0, 100.02))
    assert (b.start, b.end) == pytest.approx((100.02, 100.06))
    clock.t = 100.2
    c = buf.add_audio(FRAME)
    assert c.start == pytest.approx(100.2)  # played on arrival, not back-dated
    clock.t = 101.0
    stops = buf.voice_stops()
    assert [(s.kind, round(s.at, 3)) for s in stops] == [("dry", 100.06), ("dry", 100.22)]


def test_marks_are_released_in_order_behind_their_audio(clock: Clock) -> None:
    buf = PlaybackBuffer(clock)
    buf.add_audio(FRAME)
    buf.add_mark("t1.s0.c0.e20")
    buf.add_audio(FRAME)
    buf.add_mark("t1.s0.c1.e40.S.T")
    clock.t = 100.03
    assert names(buf.due_marks()) == ["t1.s0.c0.e20"]
    clock.t = 100.5
    assert names(buf.due_marks()) == ["t1.s0.c1.e40.S.T"]


def test_clear_empties_the_buffer_and_echoes_pending_marks(clock: Clock) -> None:
    buf = PlaybackBuffer(clock)
    for i in range(3):
        buf.add_audio(FRAME * 5)
        buf.add_mark(f"t2.s0.c{i}.e{(i + 1) * 100}" + (".S.T" if i == 2 else ""))
    clock.t = 100.15  # half way through the second chunk
    assert names(buf.due_marks()) == ["t2.s0.c0.e100"]
    released = buf.clear()
    assert names(released) == ["t2.s0.c1.e200", "t2.s0.c2.e300.S.T"]
    assert all(m.by_clear and m.echoed_at == pytest.approx(100.15) for m in released)
    assert not buf.is_playing()
    assert names(buf.add_mark("after")) == ["after"]  # nothing left to wait behind
    clock.t = 102.0
    heard = buf.played()
    assert [(round(c.start, 3), round(c.end, 3), c.cut) for c in heard] == [
        (100.0, 100.1, False),
        (100.1, 100.15, True),
    ]
    assert buf.voice_stops() == [VoiceStop(pytest.approx(100.15), "clear", 2)]


def test_clear_on_an_empty_buffer_is_not_a_voice_stop(clock: Clock) -> None:
    buf = PlaybackBuffer(clock)
    buf.add_audio(FRAME)
    clock.t = 100.5
    assert buf.clear() == []
    assert [s.kind for s in buf.voice_stops()] == ["dry"]


def test_chunks_belong_to_the_turn_of_the_next_mark(clock: Clock) -> None:
    buf = PlaybackBuffer(clock)
    a = buf.add_audio(FRAME)
    b = buf.add_audio(FRAME)
    buf.add_mark("t0.s0.c0.e40.S.T")
    c = buf.add_audio(FRAME)
    buf.add_mark("not-a-voxline-mark")  # foreign names attribute nothing
    d = buf.add_audio(FRAME)
    buf.add_mark("t3.s1.c2.e900.S")
    e = buf.add_audio(FRAME)
    assert [x.turn_id for x in (a, b, c, d, e)] == [0, 0, 3, 3, None]
    clock.t = 100.05
    assert [x.turn_id for x in buf.played()] == [0, 0, 3]


def test_finish_drops_what_never_played(clock: Clock) -> None:
    buf = PlaybackBuffer(clock)
    buf.add_audio(FRAME * 10)
    clock.t = 100.05
    buf.finish()
    clock.t = 105.0
    assert [round(c.end - c.start, 3) for c in buf.played()] == [0.05]


def test_barge_in_latency_runs_to_the_clear(clock: Clock) -> None:
    buf = PlaybackBuffer(clock)
    buf.add_audio(FRAME * 50)  # 1 s of turn 1
    buf.add_mark("t1.s0.c0.e1000.S.T")
    onset = 100.3
    clock.t = 100.48
    buf.clear()
    clock.t = 100.6
    buf.add_audio(FRAME * 5)  # the reply to the barge-in
    buf.add_mark("t2.s0.c0.e100.S.T")
    clock.t = 101.0
    m = measure_barge_in(onset, buf.played(), buf.voice_stops())
    assert m.interrupted_turn == 1
    assert m.stopped_by == "clear"
    assert m.latency_ms == pytest.approx(180.0)
    assert m.stale_audio_ms == pytest.approx(0.0)


def test_barge_in_counts_stale_audio_of_the_interrupted_turn(clock: Clock) -> None:
    buf = PlaybackBuffer(clock)
    buf.add_audio(FRAME * 25)  # 500 ms
    buf.add_mark("t1.s0.c0.e500")
    clock.t = 100.25
    buf.clear()
    buf.add_audio(FRAME * 5)  # a late chunk of turn 1 the gateway failed to drop
    buf.add_mark("t1.s0.c1.e600.S.T")
    clock.t = 101.0
    m = measure_barge_in(100.2, buf.played(), buf.voice_stops())
    assert m.latency_ms == pytest.approx(50.0)
    assert m.stale_audio_ms == pytest.approx(100.0)


def test_barge_in_without_clear_stops_when_the_buffer_runs_dry(clock: Clock) -> None:
    buf = PlaybackBuffer(clock)
    buf.add_audio(FRAME * 10)  # 200 ms, never cleared
    buf.add_mark("t4.s0.c0.e200.S.T")
    clock.t = 101.0
    m = measure_barge_in(100.05, buf.played(), buf.voice_stops())
    assert (m.interrupted_turn, m.stopped_by) == (4, "dry")
    assert m.latency_ms == pytest.approx(150.0)


def test_barge_in_when_the_agent_was_silent_measures_nothing(clock: Clock) -> None:
    buf = PlaybackBuffer(clock)
    buf.add_audio(FRAME)
    clock.t = 101.0
    m = measure_barge_in(100.5, buf.played(), buf.voice_stops())
    assert m.latency_ms is None and m.interrupted_turn is None


def test_barge_in_prefers_the_clear_over_an_earlier_underrun(clock: Clock) -> None:
    buf = PlaybackBuffer(clock)
    buf.add_audio(FRAME * 10)  # sentence 0: 200 ms
    buf.add_mark("t1.s0.c0.e200.S")
    clock.t = 100.21  # sentence 1 arrives 10 ms late: a short gap the caller hears
    buf.add_audio(FRAME * 25)
    buf.add_mark("t1.s1.c0.e500.S.T")
    clock.t = 100.3
    buf.clear()
    clock.t = 101.0
    stops = buf.voice_stops()
    assert [(s.kind, s.turn_id) for s in stops] == [("dry", 1), ("clear", 1)]
    m = measure_barge_in(100.1, buf.played(), stops)
    assert m.stopped_by == "clear"
    assert m.latency_ms == pytest.approx(200.0)
    assert m.stale_audio_ms == pytest.approx(0.0)


def test_barge_in_ignores_stops_of_newer_turns(clock: Clock) -> None:
    buf = PlaybackBuffer(clock)
    buf.add_audio(FRAME * 10)
    buf.add_mark("t1.s0.c0.e200.S.T")  # the gateway never clears turn 1: it plays out
    clock.t = 100.5
    buf.add_audio(FRAME * 10)
    buf.add_mark("t2.s0.c0.e200.S.T")
    clock.t = 100.6
    buf.clear()  # a clear of turn 2 says nothing about the barge-in on turn 1
    clock.t = 101.0
    m = measure_barge_in(100.05, buf.played(), buf.voice_stops())
    assert (m.interrupted_turn, m.stopped_by) == (1, "dry")
    assert m.latency_ms == pytest.approx(150.0)


def test_a_clear_sends_back_marks_already_played_first_as_played(clock: Clock) -> None:
    buf = PlaybackBuffer(clock)
    for i in range(3):
        buf.add_audio(FRAME * 5)
        buf.add_mark(f"t2.s0.c{i}.e{(i + 1) * 100}")
    clock.t = 100.15  # chunk 0 played out, but the player has not echoed it yet
    released = buf.clear()
    # Every outstanding mark comes back, in order; the one playback had reached is played.
    assert [(m.name, m.by_clear) for m in released] == [
        ("t2.s0.c0.e100", False),
        ("t2.s0.c1.e200", True),
        ("t2.s0.c2.e300", True),
    ]
    assert buf.clear() == []  # none is sent back twice
