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
        "Um.",
        "Uh",
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
    assert transcript_score("my number is 555 013 4567", OPTIONS) > transcript_score("my number is 555 01", OPTIONS)


SHORT_ANSWERS_AND_CLOSINGS = [
    "No.",
    "No",
    "Yes.",
    "Nope.",
    "Thank you.",
    "Thank you",
    "Thank you very much.",
    "Thanks!",
    "Yes please.",
    "Yes, please.",
    "No, thank you.",
    "No thanks.",
    "Okay, bye.",
    "Sure, thanks.",
    "Oh, thank you.",
    "What about you?",
    "And you?",
    "How about you?",
    "I do.",
    "I don't.",
    "That's all I need.",
    "That's all.",
    "I think so.",
    "Not really.",
    "Of course.",
    "You too.",
    "Goodbye.",
    "Do you?",
    "Can you?",
    "Is that all you need?",
    "Could you do that, please?",
    "Uh-uh.",
    "Uh-huh.",
    "Mm-hmm",
    "Mhm.",
]


@pytest.mark.parametrize("text", SHORT_ANSWERS_AND_CLOSINGS)
@pytest.mark.parametrize("acoustic", [-1.0, 0.0, 0.3])
def test_short_answers_and_closings_end_after_the_complete_turn_silence(text: str, acoustic: float) -> None:
    """A short answer is over when it is said; the acoustic model (-1: none) cannot make the
    caller wait the unfinished-turn silence for it."""
    decision = decide(text, acoustic, OPTIONS)
    assert decision.complete, decision
    assert decision.silence_ms == OPTIONS.complete_silence_ms


@pytest.mark.parametrize(
    "text", ["I'd like to talk to you about", "Can you tell me the", "I need to", "My name is", "Can I"]
)
def test_short_answers_do_not_rescue_cut_off_sentences(text: str) -> None:
    assert not decide(text, 0.9, OPTIONS).complete


def test_a_word_that_often_ends_unfinished_turns_waits_for_punctuation_or_acoustics() -> None:
    """ "I need" may stop there or go on: without a full stop the words alone do not end the
    turn, a confident acoustic model does, and a full stop does."""
    assert not decide("I really need", -1.0, OPTIONS).complete
    assert decide("I really need", 0.9, OPTIONS).complete
    assert decide("That is what I need.", -1.0, OPTIONS).complete


def test_the_scores_are_the_agents_options() -> None:
    patient = TurnOptions(score_short_answer=0.2)
    assert not decide("Thank you.", -1.0, patient).complete
    assert decide("Thank you.", -1.0, OPTIONS).complete
    with pytest.raises(ValueError):
        TurnOptions(score_question=1.5)


@pytest.mark.parametrize(
    "text",
    ["uh-huh", "Uh huh.", "okay", "Yeah, right.", "mm-hmm", "OK okay", "Uh-uh.", "Mm-mm.", "Mhmm.", "Unh-hunh.", "Hm."],
)
def test_backchannels(text: str) -> None:
    """Whatever spelling the recogniser gives the sound (Whisper wrote a caller's "uh-huh"
    as "Uh-uh.")."""
    assert is_backchannel(text, OPTIONS)


@pytest.mark.parametrize(
    "text", ["", "stop", "yeah but what about Sunday", "okay so when do you open", "No.", "Man.", "I am", "human"]
)
def test_not_backchannels(text: str) -> None:
    assert not is_backchannel(text, OPTIONS)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError):
        TurnOptions(complete_silence_ms=900, incomplete_silence_ms=300)
