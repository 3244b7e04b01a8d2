"""The reply the caller hears is plain speech, whatever the model wrote."""

from __future__ import annotations

import pytest

from services.brain.speakable import LineFlattener, SpeakableReply, speakable


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("We open at 9 AM on Saturday.", "We open at 9 a.m. on Saturday."),
        ("Open 9AM-1PM.", "Open 9 a.m. to 1 p.m."),
        ("From 8:00 am to 6:30 pm", "From 8 a.m. to 6:30 p.m."),
        ("It is 9 a.m. sharp.", "It is 9 a.m. sharp."),
        ("A cleaning costs $120.", "A cleaning costs 120 dollars."),
        ("A crown is $1,100.50 total", "A crown is 1100 dollars and 50 cents total"),
        ("Only $1 more", "Only 1 dollar more"),
        ("We give a 10% discount & free parking.", "We give a 10 percent discount and free parking."),
        ("**Yes!** We *do* accept __Cigna__.", "Yes! We do accept Cigna."),
        ("## Hours", "Hours"),
        ("See [our site](https://example.com/hours) for more.", "See our site for more."),
        ("Book online at https://bright.example.com/book today.", "Book online at today."),
        ("Visit www.example.com.", "Visit."),
        ("Happy to help! \U0001f600\u2728", "Happy to help!"),
        ("Use `code` here", "Use code here"),
        ("\U0001f44d", ""),
        ("**", ""),
        ("Call 555 0134 please.", "Call 555 0134 please."),
    ],
)
def test_speakable(raw: str, spoken: str) -> None:
    assert speakable(raw) == spoken


def test_lists_become_running_speech_however_the_stream_is_cut() -> None:
    raw = "We accept:\n- Delta Dental\n- Aetna\n- Cigna"
    for size in (1, 2, 3, len(raw)):
        flattener = LineFlattener()
        out = "".join(flattener.feed(raw[i : i + size]) for i in range(0, len(raw), size)) + flattener.flush()
        assert out == "We accept: Delta Dental, Aetna, Cigna", size


def test_numbered_list_and_plain_newlines() -> None:
    flattener = LineFlattener()
    out = flattener.feed("Options.\n1. Cleaning\n2) Whitening\nThat is all.\n1.5 hours") + flattener.flush()
    assert out == "Options. Cleaning, Whitening That is all. 1.5 hours"


def _reply(deltas: list[str], max_sentences: int = 2) -> list[str]:
    reply = SpeakableReply(max_sentences)
    out: list[str] = []
    for delta in deltas:
        out += reply.feed(delta)
        if reply.full:
            break
    return out + reply.flush()


def test_reply_capped_at_two_sentences_and_stops_early() -> None:
    text = "We open at 9 AM on Saturday. We close at 1 PM that day. Anything else I can help with? Bye now."
    reply = SpeakableReply()
    fed = 0
    out: list[str] = []
    for token in text.split(" "):
        out += reply.feed(token + " ")
        fed += 1
        if reply.full:
            break
    assert out == ["We open at 9 a.m. on Saturday.", "We close at 1 p.m. that day."]
    assert fed < len(text.split(" "))  # the consumer could stop reading the stream
    assert reply.flush() == []


def test_reply_sanitizes_markdown_lists_streamed_token_by_token() -> None:
    tokens = ["**Yes**", ", we", " accept", ":", "\n", "-", " Cig", "na", "\n", "-", " Aetna", "\n"]
    assert _reply(tokens) == ["Yes, we accept: Cigna, Aetna"]


def test_reply_drops_unspeakable_fragments_and_keeps_short_replies() -> None:
    assert _reply(["\U0001f600 ", "Sure", " thing", "!"]) == ["Sure thing!"]
    assert _reply([""]) == []
    assert _reply(["It costs $95", "."]) == ["It costs 95 dollars."]
