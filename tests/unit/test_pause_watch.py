"""The line's own ear beside Deepgram: pauses by the line's energy, and onsets it confirms."""

from __future__ import annotations

from services.orchestrator.end_of_turn import same_words
from services.stt.providers.pause_watch import PauseEvent, PauseWatch
from voxline.audio import FRAME_SAMPLES, pcm16_to_mulaw, tone_pcm16

VOICE = pcm16_to_mulaw(tone_pcm16(20))[:FRAME_SAMPLES]
FAINT = pcm16_to_mulaw(tone_pcm16(20, level=0.005))[:FRAME_SAMPLES]  # echo under the voice level
QUIET = bytes([0xFF]) * FRAME_SAMPLES  # mu-law silence


def feed(watch: PauseWatch, frames: list[bytes], start: int = 0) -> list[PauseEvent | None]:
    events = []
    for i, frame in enumerate(frames):
        events.append(watch.frame(start + i * FRAME_SAMPLES, frame))
    return events


def test_quiet_pauses_early_then_ends_once_per_pause() -> None:
    watch = PauseWatch(early_ms=80, end_ms=200)
    assert feed(watch, [VOICE] * 10) == [None] * 10
    events = feed(watch, [QUIET] * 12, start=10 * FRAME_SAMPLES)
    assert events[3] is PauseEvent.PAUSED and events[9] is PauseEvent.ENDED
    assert [e for e in events if e is not None] == [PauseEvent.PAUSED, PauseEvent.ENDED]
    assert watch.quiet_from == 10 * FRAME_SAMPLES and watch.loud_upto == 10 * FRAME_SAMPLES


def test_quiet_shorter_than_the_early_pause_is_no_pause() -> None:
    watch = PauseWatch(early_ms=80, end_ms=200)
    feed(watch, [VOICE] * 5)
    assert feed(watch, [QUIET] * 3 + [VOICE], start=5 * FRAME_SAMPLES) == [None] * 4  # 60 ms


def test_voice_after_a_pause_is_a_resume_and_a_new_pause_may_follow() -> None:
    watch = PauseWatch(early_ms=80, end_ms=200)
    feed(watch, [VOICE] * 5)
    assert feed(watch, [QUIET] * 4, start=5 * FRAME_SAMPLES)[-1] is PauseEvent.PAUSED
    assert watch.frame(9 * FRAME_SAMPLES, VOICE) is PauseEvent.RESUMED
    assert watch.frame(10 * FRAME_SAMPLES, VOICE) is None
    assert feed(watch, [QUIET] * 4, start=11 * FRAME_SAMPLES)[-1] is PauseEvent.PAUSED


def test_without_an_early_pause_only_the_end() -> None:
    watch = PauseWatch(early_ms=0, end_ms=200)
    feed(watch, [VOICE] * 5)
    events = feed(watch, [QUIET] * 20, start=5 * FRAME_SAMPLES)
    assert [e for e in events if e is not None] == [PauseEvent.ENDED]
    assert watch.frame(25 * FRAME_SAMPLES, VOICE) is PauseEvent.RESUMED


def test_an_utterance_reported_during_the_quiet_is_owed_its_pause() -> None:
    """Deepgram may report an onset after the sound is over (a short crackle)."""
    watch = PauseWatch(early_ms=80, end_ms=200)
    feed(watch, [VOICE] * 3 + [QUIET] * 5)
    assert watch.utterance_started() is PauseEvent.PAUSED and not watch.ended
    feed(watch, [QUIET] * 6, start=8 * FRAME_SAMPLES)
    assert watch.utterance_started() is PauseEvent.ENDED and watch.ended
    assert feed(watch, [VOICE], start=14 * FRAME_SAMPLES) == [PauseEvent.RESUMED]
    assert watch.utterance_started() is None


def test_onsets_are_confirmed_only_by_voice_level_sound_near_them() -> None:
    watch = PauseWatch(early_ms=80, end_ms=200)
    feed(watch, [FAINT] * 50 + [QUIET] * 10 + [VOICE] * 5)  # echo, quiet, then a voice at frame 60
    assert not watch.loud_near(0, 15 * FRAME_SAMPLES)  # the echo's onset: nothing loud within 300 ms
    assert watch.loud_near(0, 61 * FRAME_SAMPLES)
    assert watch.loud_near(58 * FRAME_SAMPLES, 15 * FRAME_SAMPLES)
    assert not watch.loud_near(65 * FRAME_SAMPLES, 15 * FRAME_SAMPLES)  # after it


def test_interim_and_final_words_compare_without_case_and_punctuation() -> None:
    assert same_words("what are your opening hours", "What are your opening hours?")
    assert not same_words("what are your opening", "What are your opening hours?")
