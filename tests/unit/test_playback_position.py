"""How much of the chunks Twilio held at a `clear` the caller had already heard: decided at
the clear, from the last echo and the time since, because the echoes after it cannot say."""

from __future__ import annotations

from proto import AudioFrame, MarkName
from services.gateway.playback_position import DRY_BUFFER_MARGIN_US, Heard, InFlight, heard_at_clear, heard_part

CHUNK = 800  # 100 ms of 8 kHz mu-law


def chunks(n: int, sent_us: int = 0, every_us: int = 0, size: int = CHUNK) -> list[InFlight]:
    return [
        (
            AudioFrame(bytes([i]) * size, turn_id=2, seq=0, chunk=i),
            MarkName(2, 0, i, (i + 1) * 100),
            sent_us + i * every_us,
        )
        for i in range(n)
    ]


def test_the_chunk_after_the_last_echo_began_when_the_echo_came() -> None:
    sent = chunks(4, sent_us=1_000_000)  # all queued at Twilio at once, as TTS is faster than speech
    # Chunk 0's echo came at 1.1 s, so chunk 1 started then; the clear is 35 ms into it.
    assert heard_at_clear(sent[1:], last_echo_us=1_100_000, cleared_us=1_135_000) == [
        Heard(280, False),
        Heard(0, False),
        Heard(0, False),
    ]


def test_chunks_whose_echoes_had_not_come_yet_were_played_back_to_back() -> None:
    sent = chunks(3)  # chunk 0's own echo is still on its way; an older one came at 1 s
    heard = heard_at_clear(sent, last_echo_us=1_000_000, cleared_us=1_150_000)  # all of chunk 0, half of 1
    assert heard == [Heard(CHUNK, True), Heard(400, False), Heard(0, False)]


def test_never_more_than_the_audio_sent() -> None:
    sent = chunks(2)
    assert heard_at_clear(sent, last_echo_us=1_000_000, cleared_us=9_000_000) == [Heard(CHUNK, True)] * 2


def test_a_dry_buffer_errs_towards_not_heard() -> None:
    # The previous reply's last echo was long ago: this reply's first chunk started on arrival.
    sent = chunks(2, sent_us=5_000_000)
    heard = heard_at_clear(sent, last_echo_us=0, cleared_us=5_060_000)
    assert heard[0] == Heard((60_000 - DRY_BUFFER_MARGIN_US) // 125, False)


def test_a_chunk_sent_after_the_one_before_played_out_starts_on_its_arrival() -> None:
    # A TTS slower than speech: chunk 1 reached Twilio 200 ms after chunk 0, which had
    # played out by then; counted on from chunk 0's end, all of chunk 1 would pass as heard.
    sent = chunks(2, sent_us=1_000_000, every_us=200_000)
    heard = heard_at_clear(sent, last_echo_us=1_000_000, cleared_us=1_270_000)
    assert heard == [Heard(CHUNK, True), Heard((70_000 - DRY_BUFFER_MARGIN_US) // 125, False)]


def test_an_empty_chunk_is_reached_once_the_audio_before_it_played() -> None:
    sent = [*chunks(1), *chunks(1, size=0)]  # a sentence closed by a skip: its mark, no audio
    assert heard_at_clear(sent, last_echo_us=1_000_000, cleared_us=1_099_000)[1] == Heard(0, False)
    assert heard_at_clear(sent, last_echo_us=1_000_000, cleared_us=1_100_000)[1] == Heard(0, True)


def test_nothing_played_yet_is_nothing_heard() -> None:
    assert heard_at_clear(chunks(2, sent_us=10), last_echo_us=0, cleared_us=10) == [Heard(0, False)] * 2
    assert heard_at_clear([], last_echo_us=0, cleared_us=10) == []


def test_the_part_heard_is_placed_in_its_sentence_rounded_down_and_closes_nothing() -> None:
    frame = AudioFrame(bytes(CHUNK), turn_id=2, seq=1, chunk=3)
    mark = MarkName(2, 1, 3, 400, sentence_end=True, turn_end=True)
    assert heard_part(mark, frame, 280) == MarkName(2, 1, 3, 335)  # 35 ms of 300..400
    assert heard_part(mark, frame, 281) == MarkName(2, 1, 3, 335)  # 35.1 ms: not 36
