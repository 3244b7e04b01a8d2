"""The gateway's reply playback with no socket: ordering, synthesis attempts, pause, resume,
clear and cancel, driven the way the media stream drives `Playback`."""

from __future__ import annotations

from proto import AudioFrame, FrameFlags, MarkName
from services.gateway.playback import Chunk, Playback, ReplyOrder

CHUNK = 800  # 100 ms of 8 kHz mu-law
EOS, EOT = FrameFlags.END_OF_SENTENCE, FrameFlags.END_OF_TURN


def frame(
    seq: int, chunk: int, flags: FrameFlags = FrameFlags.NONE, *, turn: int = 1, attempt: int = 0, size: int = CHUNK
) -> AudioFrame:
    return AudioFrame(bytes([attempt]) * size, turn_id=turn, seq=seq, chunk=chunk, flags=flags, attempt=attempt)


def keys(chunks: list[Chunk]) -> list[tuple[int, int, int]]:
    """(sentence, chunk, attempt) of each chunk, in the order they go out."""
    return [(c.frame.seq, c.frame.chunk, c.frame.attempt) for c in chunks]


def send(playback: Playback, chunks: list[Chunk], at_us: int = 0) -> list[Chunk]:
    """What the media stream does with `push`'s answer: every chunk goes on the wire."""
    for c in chunks:
        playback.sent(c, at_us)
    return chunks


# --- ordering ------------------------------------------------------------------------


def test_reply_order_restores_sentence_and_chunk_order() -> None:
    order = ReplyOrder(turn_id=1)
    # Sentence 1 arrives complete before sentence 0 (two TTS workers in parallel).
    assert order.push(frame(1, 0)) == []
    assert order.push(frame(1, 1, EOS)) == []
    assert keys(order.push(frame(0, 0)) or []) == [(0, 0, 0)]
    released = order.push(frame(0, 1, EOS)) or []
    assert keys(released) == [(0, 1, 0), (1, 0, 0), (1, 1, 0)]
    assert order.pending == {}
    # Each chunk's mark says how far into its own sentence it ends.
    assert [c.mark.encode() for c in released] == ["t1.s0.c1.e200.S", "t1.s1.c0.e100", "t1.s1.c1.e200.S"]


def test_frames_of_a_cancelled_or_superseded_turn_are_dropped() -> None:
    playback = Playback()
    assert keys(playback.push(frame(0, 0, turn=2))) == [(0, 0, 0)]
    assert playback.push(frame(0, 1, turn=1)) == []  # turn 2 started: turn 1 is over
    playback.cancel(2)
    assert playback.push(frame(0, 1, turn=2)) == []
    assert playback.dropped == 2
    assert keys(playback.push(frame(0, 0, turn=3))) == [(0, 0, 0)]


# --- synthesis attempts (a TTS worker died) --------------------------------------------


def test_a_retry_mid_sentence_restarts_the_sentence_from_its_first_chunk() -> None:
    order = ReplyOrder(turn_id=1)
    assert keys(order.push(frame(0, 0)) or []) == [(0, 0, 0)]
    assert keys(order.push(frame(0, 1)) or []) == [(0, 1, 0)]
    assert order.push(frame(0, 3)) == []  # pending, of the attempt about to be superseded
    # The worker died; another one speaks the whole sentence again.
    retried = order.push(frame(0, 0, attempt=1)) or []
    assert keys(retried) == [(0, 0, 1)]
    assert retried[0].mark == MarkName(1, 0, 0, 100)  # the sentence's played ms start again
    assert order.push(frame(0, 2)) is None  # a late frame of the dead worker
    assert keys(order.push(frame(0, 1, attempt=1)) or []) == [(0, 1, 1)]
    assert keys(order.push(frame(0, 2, EOS, attempt=1)) or []) == [(0, 2, 1)]
    assert keys(order.push(frame(1, 0, EOS | EOT)) or []) == [(1, 0, 0)]


def test_a_skip_mid_sentence_closes_it_and_the_reply_goes_on_to_its_end() -> None:
    playback = Playback()
    assert keys(send(playback, playback.push(frame(0, 0)))) == [(0, 0, 0)]
    assert playback.push(frame(1, 0)) == []  # the next sentence waits for this one
    assert playback.push(frame(1, 1, EOS)) == []
    assert playback.push(frame(2, 0, EOS | EOT)) == []
    # Attempt 0's worker died after chunk 0, attempt 1 produced nothing: the watchdog's skip.
    released = playback.push(AudioFrame(b"", turn_id=1, seq=0, chunk=0, flags=EOS, attempt=2))
    assert keys(released) == [(0, 0, 2), (1, 0, 0), (1, 1, 0), (2, 0, 0)]
    assert released[0].mark == MarkName(1, 0, 0, 0, sentence_end=True)
    assert released[-1].mark.turn_end
    assert playback.push(frame(0, 1, attempt=1)) == []  # the retry, late: dropped


def test_a_retry_of_a_sentence_not_yet_playing_replaces_the_pending_attempt() -> None:
    order = ReplyOrder(turn_id=1)
    assert order.push(frame(1, 0)) == []
    assert order.push(frame(1, 1)) == []  # attempt 0 stops here: its worker died
    assert order.push(frame(1, 0, attempt=1)) == []
    assert order.push(frame(1, 1, EOS, attempt=1)) == []
    assert order.push(frame(1, 2, EOS)) is None  # the dead worker's last gasp
    released = order.push(frame(0, 0, EOS)) or []
    assert keys(released) == [(0, 0, 0), (1, 0, 1), (1, 1, 1)]


def test_late_frames_of_a_sentence_already_played_are_dropped() -> None:
    order = ReplyOrder(turn_id=1)
    assert keys(order.push(frame(0, 0, EOS)) or []) == [(0, 0, 0)]
    assert order.push(frame(0, 0, EOS, attempt=1)) is None  # a retry that came too late
    assert order.push(frame(0, 0, EOS)) is None  # a duplicate


# --- pause, resume, clear ---------------------------------------------------------------


def test_pause_holds_what_twilio_had_not_played_and_resume_sends_it_first() -> None:
    playback = Playback()
    for c in range(3):
        send(playback, playback.push(frame(0, c)), at_us=1_000_000)
    assert playback.mark_echoed("t1.s0.c0.e100", at_us=1_100_000) == MarkName(1, 0, 0, 100)
    # The caller says "uh-huh" 30 ms into chunk 1: Twilio must be sent `clear`, and those
    # 30 ms count as heard at once, ending 130 ms into the sentence.
    cleared = playback.pause(1, at_us=1_130_000)
    assert cleared is not None and cleared.heard == [MarkName(1, 0, 1, 130)] and cleared.resend == []
    assert playback.push(frame(0, 3, EOS)) == []  # arrives while paused: held
    assert not playback.inflight
    # Twilio sends back the marks the clear flushed: nothing new.
    assert playback.mark_echoed("t1.s0.c1.e200", at_us=1_131_000) is None
    assert playback.mark_echoed("t1.s0.c2.e300", at_us=1_131_000) is None
    resumed = playback.resume(1)
    assert keys(resumed) == [(0, 1, 0), (0, 2, 0), (0, 3, 0)]
    assert len(resumed[0].frame.payload) == CHUNK - 240  # the 30 ms heard is not sent again
    assert [c.mark.encode() for c in resumed] == ["t1.s0.c1.e200", "t1.s0.c2.e300", "t1.s0.c3.e400.S"]
    send(playback, resumed, at_us=2_000_000)
    assert playback.mark_echoed("t1.s0.c1.e200", at_us=2_100_000) == MarkName(1, 0, 1, 200)
    assert playback.resume(1) == []  # resumed once


def test_a_chunk_played_before_the_clear_counts_as_heard_though_its_echo_comes_after() -> None:
    playback = Playback()
    for c in range(3):
        send(playback, playback.push(frame(0, c)), at_us=1_000_000)
    playback.mark_echoed("t1.s0.c0.e100", at_us=1_100_000)
    # Chunk 1 played out at 1.2 s; its echo is still on the wire when the caller's
    # "uh-huh" pauses the reply at 1.25 s, half way into chunk 2.
    cleared = playback.pause(1, at_us=1_250_000)
    assert cleared is not None and cleared.heard == [MarkName(1, 0, 1, 200), MarkName(1, 0, 2, 250)]
    # Chunk 1's echo crosses the clear, then Twilio sends chunk 2's back: neither is news.
    assert playback.mark_echoed("t1.s0.c1.e200", at_us=1_260_000) is None
    assert playback.mark_echoed("t1.s0.c2.e300", at_us=1_260_000) is None
    # The resume sends only what was not heard: the second half of chunk 2.
    resumed = playback.resume(1)
    assert keys(resumed) == [(0, 2, 0)] and len(resumed[0].frame.payload) == CHUNK - 400


def test_a_pause_counts_an_older_turns_audio_still_playing_ahead_of_the_paused_one() -> None:
    playback = Playback()
    send(playback, playback.push(frame(0, 0, turn=1)) + playback.push(frame(0, 1, EOS | EOT, turn=1)), 900_000)
    send(playback, playback.push(frame(0, 0, turn=2)) + playback.push(frame(0, 1, turn=2)), 950_000)
    playback.mark_echoed("t1.s0.c0.e100", at_us=1_000_000)  # turn 1's last chunk began then
    # 150 ms later turn 1's last chunk has played and turn 2's first chunk is 50 ms in.
    playback.pause(2, at_us=1_150_000)
    resumed = playback.resume(2)
    assert keys(resumed) == [(0, 0, 0), (0, 1, 0)]
    assert [len(c.frame.payload) for c in resumed] == [CHUNK - 400, CHUNK]  # nothing unheard skipped


def test_cancelling_a_turn_sends_again_the_newer_turn_the_clear_threw_away() -> None:
    playback = Playback()
    send(playback, playback.push(frame(0, 0, EOS | EOT, turn=1)), at_us=1_000_000)
    # Turn 2's first chunks reach the gateway before turn 1's cancel does: they queue behind it.
    newer = send(playback, playback.push(frame(0, 0, turn=2)) + playback.push(frame(0, 1, turn=2)), 1_020_000)
    playback.cancel(1)
    cleared = playback.flush(1, at_us=1_050_000)
    assert cleared is not None and cleared.heard == []  # turn 1's 10 ms no longer matter
    assert cleared.resend == newer  # whole: none of it had played
    for name in ["t1.s0.c0.e100.S.T", "t2.s0.c0.e100", "t2.s0.c1.e200"]:  # sent back by the clear
        assert playback.mark_echoed(name, at_us=1_051_000) is None
    send(playback, cleared.resend, at_us=1_052_000)
    assert playback.mark_echoed("t2.s0.c0.e100", at_us=1_152_000) == MarkName(2, 0, 0, 100)


def test_a_newer_turn_partly_heard_at_the_clear_is_reported_and_sent_again_from_there() -> None:
    playback = Playback()
    send(playback, playback.push(frame(0, 0, turn=1)) + playback.push(frame(0, 1, turn=1)), 900_000)
    send(playback, playback.push(frame(0, 0, turn=2)) + playback.push(frame(0, 1, turn=2)), 950_000)
    playback.mark_echoed("t1.s0.c0.e100", at_us=1_000_000)
    playback.cancel(1)
    cleared = playback.flush(1, at_us=1_220_000)  # turn 1's chunk 1 played, then turn 2's chunk 0 and 20 ms
    assert cleared is not None
    assert cleared.heard == [MarkName(2, 0, 0, 100), MarkName(2, 0, 1, 120)]
    assert keys(cleared.resend) == [(0, 1, 0)] and len(cleared.resend[0].frame.payload) == CHUNK - 160


def test_pause_with_nothing_in_flight_sends_no_clear_and_holds_what_comes() -> None:
    playback = Playback()
    assert playback.pause(1, at_us=0) is None
    assert playback.push(frame(0, 0)) == []
    assert keys(playback.resume(1)) == [(0, 0, 0)]
    assert keys(playback.push(frame(0, 1))) == [(0, 1, 0)]  # playing again


def test_a_retry_while_paused_drops_the_held_chunks_of_the_older_attempt() -> None:
    playback = Playback()
    send(playback, playback.push(frame(0, 0)), at_us=10)
    assert playback.pause(1, at_us=10) is not None
    assert playback.push(frame(0, 1)) == []
    assert playback.push(frame(0, 0, attempt=1)) == []
    assert keys(playback.resume(1)) == [(0, 0, 1)]


def test_resume_of_another_turn_plays_nothing() -> None:
    playback = Playback()
    playback.pause(2, at_us=0)
    assert playback.push(frame(0, 0, turn=2)) == []
    assert playback.resume(1) == []
    assert playback.resume(0) == []
    assert keys(playback.resume(2)) == [(0, 0, 0)]


def test_cancel_drops_held_audio_and_asks_for_a_clear_only_when_twilio_holds_some() -> None:
    playback = Playback()
    send(playback, playback.push(frame(0, 0)))
    playback.pause(1, at_us=0)
    playback.push(frame(0, 1))
    playback.cancel(1)
    assert playback.flush(1, at_us=0) is None  # the pause's clear already emptied Twilio's buffer
    assert playback.resume(1) == [] and playback.held == []
    assert playback.push(frame(0, 2)) == []
    # A new turn plays; cancelling it while Twilio holds its audio needs a clear.
    send(playback, playback.push(frame(0, 0, turn=2)))
    playback.cancel(2)
    cleared = playback.flush(2, at_us=0)
    assert cleared is not None and cleared.resend == []
    assert not playback.may_send(frame(0, 1, turn=2))
    assert playback.mark_echoed("t2.s0.c0.e100", at_us=5) is None  # flushed, not played


def test_marks_a_clear_never_sent_back_do_not_swallow_later_echoes() -> None:
    playback = Playback()
    send(playback, playback.push(frame(0, 0, turn=1)), at_us=0)
    playback.cancel(1)
    assert playback.flush(1, at_us=0) is not None
    # Had Twilio not sent turn 1's mark back, the first echo of a later mark says it never will.
    send(playback, playback.push(frame(0, 0, turn=2)), at_us=10)
    assert playback.mark_echoed("t2.s0.c0.e100", at_us=100_010) == MarkName(2, 0, 0, 100)
    assert not playback.settled


def test_an_echo_of_a_mark_not_in_flight_is_not_played_audio() -> None:
    playback = Playback()
    send(playback, playback.push(frame(0, 0)), at_us=0)
    assert playback.mark_echoed("t1.s0.c0.e100", at_us=100_000) is not None
    assert playback.mark_echoed("t1.s0.c0.e100", at_us=100_001) is None  # a second echo
    assert playback.last_echo_us == 100_000


def test_a_mark_we_never_wrote_is_not_played_audio() -> None:
    playback = Playback()
    assert playback.mark_echoed("someone-else's-mark", at_us=1) is None
    assert playback.last_echo_us == 0


def test_first_audio_of_each_turn_is_reported_once() -> None:
    playback = Playback()
    closing = playback.push(AudioFrame(b"", turn_id=1, seq=0, chunk=0, flags=EOS))
    assert [playback.sent(c, 0) for c in closing] == [False]  # no audio in it
    assert [playback.sent(c, 0) for c in playback.push(frame(0, 0, turn=2))] == [True]
    assert [playback.sent(c, 0) for c in playback.push(frame(0, 1, turn=2))] == [False]
