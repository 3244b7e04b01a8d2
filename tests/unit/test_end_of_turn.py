"""End-of-turn scoring: the words catch what silence and intonation miss."""

from __future__ import annotations

import pytest

from services.orchestrator.end_of_turn import decide, is_backchannel, transcript_score
from voxline.agents.turn_options import TurnOptions

OPTIONS = TurnOptions()


@pytest.mark.parametrize(
    "text",
    [
        "I need to cancel my",
        "I'd like to book an appointment and",
        "so um",
        "my number is 555 01",
        "Well, I was thinking...",
    ],
)
def test_unfinished_sentences_wait_longer(text: str) -> None:
    decision = decide(text, -1.0, OPTIONS)
    assert not decision.complete
    assert decision.silence_ms > OPTIONS.complete_silence_ms


@pytest.mark.parametrize(
    "text", ["What time do you open on Saturday?", "Do you take Cigna", "I'd like to book a cleaning.", "yes"]
)
def test_finished_sentences_end_after_the_short_silence(text: str) -> None:
    decision = decide(text, -1.0, OPTIONS)
    assert decision.complete and decision.silence_ms == OPTIONS.complete_silence_ms


def test_acoustic_confidence_cannot_finish_an_obviously_cut_off_sentence() -> None:
    assert not decide("I need to cancel my", 0.97, OPTIONS).complete
    assert decide("Can you check my appointment", 0.9, OPTIONS).complete


def test_a_full_phone_number_is_complete() -> None:
    assert transcript_score("my number is 555 013 4567") > transcript_score("my number is 555 01")


@pytest.mark.parametrize("text", ["uh-huh", "Uh huh.", "okay", "Yeah, right.", "mm-hmm", "OK okay"])
def test_backchannels(text: str) -> None:
    assert is_backchannel(text, OPTIONS)


@pytest.mark.parametrize("text", ["", "stop", "yeah but what about Sunday", "okay so when do you open"])
def test_not_backchannels(text: str) -> None:
    assert not is_backchannel(text, OPTIONS)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError):
        TurnOptions(complete_silence_ms=900, incomplete_silence_ms=300)
