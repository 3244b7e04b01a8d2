"""The early pause of a streaming recogniser: line quiet plus an interim covering it."""

from __future__ import annotations

from services.orchestrator.end_of_turn import same_words
from services.stt.providers.pause_watch import PauseEvent, PauseWatch
from voxline.audio import FRAME_SAMPLES, pcm16_to_mulaw, tone_pcm16

VOICE = pcm16_to_mulaw(tone_pcm16(20))[:FRAME_SAMPLES]
QUIET = bytes([0xFF]) * FRAME_SAMPLES  # mu-law silence


def feed(watch: PauseWatch, frames: list[bytes], start: int = 0) -> list[PauseEvent | None]:
    events = []
    for i, frame in enumerate(frames):
        events.append(watch.frame(start + i * FRAME_SAMPLES, frame))
    return events


def test_quiet_and_a_covering_interim_make_one_pause_whichever_comes_last() -> None:
    watch = PauseWatch(early_ms=80)
    feed(watch, [VOICE] * 10)
    assert watch.interim("what are your", covered_to=5 * FRAME_SAMPLES) is None  # still speaking
    events = feed(watch, [QUIET] * 6, start=10 * FRAME_SAMPLES)
    assert PauseEvent.PAUSED not in events  # the interim stops before the quiet began
    # One that ends where the quiet begins may still lack the last word: not yet.
    assert watch.interim("what are your", covered_to=10 * FRAME_SAMPLES) is None
    assert watch.interim("what are your hours", covered_to=16 * FRAME_SAMPLES) is PauseEvent.PAUSED
    assert watch.text == "what are your hours" and watch.quiet_from == 10 * FRAME_SAMPLES
    assert feed(watch, [QUIET] * 5, start=16 * FRAME_SAMPLES) == [None] * 5  # once per pause


def test_quiet_shorter_than_the_early_pause_is_no_pause() -> None:
    watch = PauseWatch(early_ms=80)
    feed(watch, [VOICE] * 5)
    watch.interim("hello there", covered_to=10 * FRAME_SAMPLES)
    assert feed(watch, [QUIET] * 3 + [VOICE], start=5 * FRAME_SAMPLES) == [None] * 4  # 60 ms


def test_voice_after_a_pause_is_a_resume_and_a_new_pause_may_follow() -> None:
    watch = PauseWatch(early_ms=80)
    feed(watch, [VOICE] * 5)
    watch.interim("I need to cancel", covered_to=100 * FRAME_SAMPLES)
    assert feed(watch, [QUIET] * 4, start=5 * FRAME_SAMPLES)[-1] is PauseEvent.PAUSED
    assert watch.frame(9 * FRAME_SAMPLES, VOICE) is PauseEvent.RESUMED
    assert watch.frame(10 * FRAME_SAMPLES, VOICE) is None
    watch.interim("I need to cancel my visit", covered_to=100 * FRAME_SAMPLES)
    assert feed(watch, [QUIET] * 4, start=11 * FRAME_SAMPLES)[-1] is PauseEvent.PAUSED


def test_off_and_reset() -> None:
    off = PauseWatch(early_ms=0)
    off.interim("hello", covered_to=10**6)
    assert PauseEvent.PAUSED not in feed(off, [QUIET] * 20)
    watch = PauseWatch(early_ms=80)
    watch.interim("hello", covered_to=10**6)
    watch.utterance_ended()
    assert PauseEvent.PAUSED not in feed(watch, [QUIET] * 20)  # no interim of the next utterance yet


def test_interim_and_final_words_compare_without_case_and_punctuation() -> None:
    assert same_words("what are your opening hours", "What are your opening hours?")
    assert not same_words("what are your opening", "What are your opening hours?")
