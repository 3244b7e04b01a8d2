"""The incremental sentence splitter that decides when TTS can start."""

from __future__ import annotations

import pytest

from services.brain.sentences import SentenceSplitter


def split(text: str, step: int = 0, **kwargs: int) -> list[str]:
    """Feed `text` in pieces of `step` characters (0: word-like tokens), then flush."""
    splitter = SentenceSplitter(**kwargs)
    if step:
        pieces = [text[i : i + step] for i in range(0, len(text), step)]
    else:
        pieces = [token + " " for token in text.split(" ")]
        pieces[-1] = pieces[-1][:-1]
    out: list[str] = []
    for piece in pieces:
        out += splitter.feed(piece)
    return out + splitter.flush()


@pytest.mark.parametrize("step", [0, 1, 2, 7, 1000])
def test_splits_on_terminal_punctuation_however_it_is_streamed(step: int) -> None:
    text = "Hello there, how are you? We open at nine every day! Call us any time you like."
    assert split(text, step) == [
        "Hello there, how are you?",
        "We open at nine every day!",
        "Call us any time you like.",
    ]


def test_first_sentence_comes_out_as_soon_as_the_next_character_arrives() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("The shop is open today.") == []  # could still be "today.com"
    assert splitter.feed(" ") == ["The shop is open today."]
    assert splitter.feed("And tomorrow") == []
    assert splitter.flush() == ["And tomorrow"]


def test_decimals_are_not_sentence_ends() -> None:
    assert split("The price is 3.5 dollars per item. Thanks for asking me.", step=1) == [
        "The price is 3.5 dollars per item.",
        "Thanks for asking me.",
    ]


def test_a_dot_at_the_end_of_the_buffer_waits_for_the_decimals() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("It costs about 3.") == []
    assert splitter.feed("50 in total. ") == ["It costs about 3.50 in total."]


@pytest.mark.parametrize(
    "text",
    [
        "Please ask Dr. Smith about your results today.",
        "Mr. and Mrs. Jones will be there soon.",
        "We are on Main St. near the old station.",
        "Bring something, e.g. a passport or a licence.",
        "We open at 9 a.m. and close at 5 p.m. every weekday.",
        "Speak to J. Smith at the front desk please.",
    ],
)
def test_abbreviations_and_initials_do_not_split(text: str) -> None:
    assert split(text) == [text]


def test_short_fragments_join_the_next_sentence() -> None:
    assert split("Sure. Let me check that for you. Yes! It is available now.") == [
        "Sure. Let me check that for you.",
        "Yes! It is available now.",
    ]


def test_a_short_last_sentence_is_still_emitted() -> None:
    assert split("Thanks for calling us today. Goodbye.") == ["Thanks for calling us today.", "Goodbye."]


def test_semicolons_and_colons_split_only_long_runs() -> None:
    assert split("You said: hello there. I heard you fine.") == ["You said: hello there.", "I heard you fine."]
    long_clause = "We have several options available for you this evening at the restaurant"
    assert split(f"{long_clause}; the first is a table by the window.") == [
        f"{long_clause};",
        "the first is a table by the window.",
    ]


def test_question_and_exclamation_with_closing_quotes() -> None:
    assert split('He said "we are closed today." Then he left the shop.') == [
        'He said "we are closed today."',
        "Then he left the shop.",
    ]


def test_newlines_end_a_line_of_a_list() -> None:
    text = "Here are your options today\n- a table by the window\n- a table outside"
    assert split(text, step=3) == ["Here are your options today", "- a table by the window", "- a table outside"]


def test_ellipsis_is_not_a_split_point_within_it() -> None:
    assert split("Well... let me think about that one. Okay then, here it is.") == [
        "Well... let me think about that one.",
        "Okay then, here it is.",
    ]


def test_long_runs_are_capped_at_a_comma() -> None:
    clause = "and then we walked a little further along the river"
    text = ", ".join([clause] * 8) + "."
    sentences = split(text, step=5)
    assert all(len(s) <= 200 for s in sentences)
    assert len(sentences) > 1
    assert all(s.endswith(",") for s in sentences[:-1])
    assert " ".join(sentences) == text


def test_long_runs_without_commas_are_capped_at_a_space() -> None:
    text = " ".join(["word"] * 120)
    sentences = split(text, step=11)
    assert all(len(s) <= 200 for s in sentences)
    assert " ".join(sentences) == text


def test_one_huge_delta_with_a_late_period_is_still_capped() -> None:
    text = " ".join(["word"] * 80) + ". Short tail sentence here."
    sentences = split(text, step=10_000)
    assert all(len(s) <= 200 for s in sentences)
    assert " ".join(sentences) == text


def test_unbroken_text_is_cut_at_the_cap() -> None:
    assert [len(s) for s in split("x" * 450, step=50)] == [200, 200, 50]


def test_empty_and_whitespace_streams_yield_nothing() -> None:
    assert split("") == []
    assert split("   \n  ") == []


def test_custom_limits() -> None:
    assert split("Hi. Bye. Ok.", min_words=1) == ["Hi.", "Bye.", "Ok."]
