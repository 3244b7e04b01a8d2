"""What the caller heard, from mark echoes, cut at word level."""

from __future__ import annotations

from services.orchestrator.turn import Turn


def _turn() -> Turn:
    turn = Turn(turn_id=2, kind="reply", caller_text="hours?")
    turn.sentences = {0: "We open at nine.", 1: "We close at six in the evening.", 2: ""}
    turn.audio_ms = {0: 1000.0, 1: 2000.0, 2: 0.0}
    return turn


def test_nothing_heard_before_any_echo() -> None:
    assert _turn().heard_text() == ""


def test_whole_sentences_and_a_proportional_word_cut() -> None:
    turn = _turn()
    turn.sentence_heard.add(0)
    turn.heard_ms[1] = 1000  # half of "We close at six in the evening." (7 words)
    assert turn.heard_text() == "We open at nine. We close at"


def test_a_gap_stops_what_counts_as_heard() -> None:
    turn = _turn()
    turn.heard_ms[0] = 500
    turn.sentence_heard.add(1)  # cannot have heard sentence 1 without finishing 0
    assert turn.heard_text() == "We open"


def test_latency_breakdown_and_overhead() -> None:
    turn = _turn()
    base = 1_000_000
    for name, ms in [
        ("speech_end", 0),
        ("stt_final", 320),
        ("end_of_turn", 330),
        ("brain_request", 331),
        ("first_token", 500),
        ("first_sentence", 600),
        ("tts_request", 601),
        ("tts_first_audio", 700),
        ("first_media", 702),
    ]:
        turn.mark(name, base + ms * 1000)
    turn.provider_ms = {"end_of_turn_silence": 300.0, "stt": 20.0, "llm": 268.0, "tts": 99.0}
    latency = turn.latency_ms()
    assert latency["first_media_sent"] == 702.0
    assert latency["llm_first_token"] == 169.0
    # Ideal: brain ready at 331 + 268 = 599 (after the 330 ms end-of-turn wait), + 99 TTS = 698.
    assert latency["pipeline_overhead"] == 4.0
    # The 4 ms by hop: brain 600 - 331 - 268, orchestrator 601 - 600, TTS 700 - 601 - 99,
    # gateway 702 - 700.
    hops = {k: v for k, v in latency.items() if k.startswith("hop_")}
    assert hops == {"hop_brain": 1.0, "hop_orchestrator": 1.0, "hop_tts": 0.0, "hop_gateway": 2.0}
    assert sum(hops.values()) == latency["pipeline_overhead"]


def test_a_preemptive_reply_waits_for_the_end_of_turn_outside_its_hop() -> None:
    # The first sentence was ready at 400 ms but the turn ended only at 600: the TTS request
    # at 601 is 1 ms of orchestrator hop, not 201.
    turn = _turn()
    base = 1_000_000
    for name, ms in [("speech_end", 0), ("brain_request", 200), ("first_sentence", 400), ("end_of_turn", 600)]:
        turn.mark(name, base + ms * 1000)
    turn.mark("tts_request", base + 601_000)
    turn.provider_ms = {"llm": 199.0}
    latency = turn.latency_ms()
    assert latency["hop_orchestrator"] == 1.0
    assert latency["hop_brain"] == 1.0
    assert "hop_gateway" not in latency  # no first media yet: no number made up


def test_sentences_tts_failed_on_are_not_heard() -> None:
    turn = _turn()
    turn.sentence_heard.update({0, 1, 2})
    turn.failed.add(0)
    assert turn.heard_text() == "We close at six in the evening."
    assert not turn.unspoken()
    turn.failed.add(1)
    assert turn.heard_text() == "" and turn.unspoken()


def test_a_sentence_still_streaming_is_cut_by_an_estimate_from_its_text() -> None:
    # TTS has not reported the sentence's length yet (it streams as it speaks), but
    # Twilio confirmed 1.3 s of it: the words up to a slow speaking rate count as heard.
    turn = Turn(turn_id=3, kind="reply", caller_text="tell me about the clinic")
    turn.sentences = {0: "Our clinic is next to the public library on Maple Street."}  # 58 chars
    turn.heard_ms[0] = 1300
    heard = turn.heard_text()
    assert heard == "Our clinic"  # int(11 words * 1300 / (58 * 85)) = 2
    assert turn.sentences[0].startswith(heard)
    turn.heard_ms[0] = 60_000  # more than the estimate: never more than the sentence
    assert turn.heard_text() == turn.sentences[0]
