"""The bench's arithmetic: percentiles, merged lateness histograms, what counts as a lost
word, a new answer or a cut-off. No stack and no timing assertions: pure functions only."""

from __future__ import annotations

from typing import Any

import pytest

from voxline.bench.metrics import hist_percentile, merge_hists, peak_concurrency, summarize
from voxline.bench.report import format_hops, format_table, target_verdicts
from voxline.bench.runner import split, workers_for
from voxline.bench.scenarios import SCENARIOS, SHORT_ANSWERS
from voxline.simulator.results import BargeInResult, CallResult, TurnResult, percentile


def reply(turn_id: int, caller: str, overhead: float, **extra: Any) -> dict[str, Any]:
    return {
        "turn_id": turn_id,
        "kind": "reply",
        "caller_text": caller,
        "latency": {"pipeline_overhead": overhead},
        **extra,
    }


def call(turns: list[TurnResult], record_turns: list[dict[str, Any]], **kw: Any) -> CallResult:
    r = CallResult(call_sid="CA1", accepted=True, turns=turns, record={"status": "ended", "turns": record_turns}, **kw)
    return r


def test_percentile_interpolates_and_none_without_data() -> None:
    assert percentile([], 95) is None
    assert percentile([10.0], 95) == 10.0
    assert percentile([0.0, 10.0], 50) == pytest.approx(5.0)
    assert percentile(list(map(float, range(101))), 95) == pytest.approx(95.0)


def test_lateness_histograms_merge_and_give_nearest_rank_percentiles() -> None:
    merged = merge_hists([{0: 98, 1: 1}, {"30": 1}])  # type: ignore[dict-item]  # JSON keys are strings
    assert merged == {0: 98, 1: 1, 30: 1}
    assert hist_percentile(merged, 50) == 0.0
    assert hist_percentile(merged, 99) == 1.0
    assert hist_percentile(merged, 100) == 30.0
    assert hist_percentile({}, 99) is None


def test_peak_concurrency_counts_overlap_not_calls() -> None:
    assert peak_concurrency([(0, 10), (5, 15), (20, 30)]) == 2
    assert peak_concurrency([(0, 1), (1, 2)]) == 1  # one ends as the next starts
    assert peak_concurrency([]) == 0


def test_split_and_workers() -> None:
    assert split(10, 3) == [4, 3, 3]
    assert sum(split(200, 4)) == 200
    assert workers_for(1, 50, 8) == 1
    assert workers_for(200, 50, 8) == 4
    assert workers_for(200, 10, 8) == 8


def test_turns_row_takes_latency_and_overhead_of_replies_only() -> None:
    calls = [
        call(
            [TurnResult(0, "what are your opening hours", first_media_latency_ms=500.0)],
            [{"turn_id": 1, "kind": "greeting", "latency": {"pipeline_overhead": 99.0}}, reply(2, "q", 4.0)],
            send_lateness_ms={0: 10, 2: 1},
        ),
        call([TurnResult(0, "q", first_media_latency_ms=700.0)], [reply(2, "q", 6.0)]),
    ]
    row = summarize("turns", 2, calls, [(0.0, 1.0), (0.5, 2.0)])
    assert row["turn_latency_ms"]["n"] == 2 and row["turn_latency_ms"]["p50"] == pytest.approx(600.0)
    assert row["pipeline_overhead_ms"]["n"] == 2  # the greeting's number is not a reply's
    assert row["pipeline_overhead_ms"]["p95"] == pytest.approx(5.9)
    assert row["peak_concurrency"] == 2 and row["ok"] == 2
    assert row["sim_lateness_ms"]["frames"] == 11


def test_backchannel_row_counts_lost_repeated_and_new_answers() -> None:
    clean = call(
        [
            TurnResult(0, "q", turn_id=2, completed=True, lost_audio_ms=0.0, repeated_audio_ms=0.0),
            TurnResult(1, "okay"),
        ],
        [reply(2, "q", 3.0, paused=1)],
    )
    repeated = call(
        [TurnResult(0, "q", turn_id=2, completed=True, lost_audio_ms=0.0, repeated_audio_ms=40.0)],
        [reply(2, "q", 3.0, paused=1)],
    )
    answered = call(
        [TurnResult(0, "q", turn_id=2, completed=False, lost_audio_ms=3000.0, repeated_audio_ms=0.0)],
        [reply(2, "q", 3.0, interrupted=True), reply(3, "uh-huh", 3.0)],
    )
    row = summarize("backchannel", 3, [clean, repeated, answered], [])
    bc = row["backchannel"]
    assert (bc["with_lost_audio"], bc["with_repeated_audio"], bc["new_answers"]) == (1, 1, 1)
    assert (bc["paused"], bc["interrupted"], bc["reply_not_finished"], bc["affected"]) == (2, 1, 1, 2)
    assert bc["repeated_ms"]["max"] == 40.0
    assert row["pipeline_overhead_ms"]["n"] == 3  # the answer to "uh-huh" is not a question's


def test_barge_in_row_sums_stale_audio_and_checks_heard_text() -> None:
    played = {0: (1000.0, 1000.0), 1: (500.0, 2000.0)}  # first sentence whole, a quarter of the second
    r = call(
        [TurnResult(0, "q", turn_id=2)],
        [
            reply(
                2,
                "q",
                3.0,
                reply_text="One two three. A b c d e f g h.",
                heard_text="One two three. A b",
                interrupted=True,
            )
        ],
        barge_ins=[
            BargeInResult(1, 5000.0, 2, 40.0, "clear", 0.0, played),
            BargeInResult(1, 9000.0, 2, 60.0, "clear", 20.0),
        ],
    )
    row = summarize("barge_in", 1, [r], [])
    assert row["stale_ms"]["total"] == 20.0
    assert row["barge_in_ms"]["p50"] == pytest.approx(50.0)
    assert row["heard_text"] == {"checked": 1, "mismatched": 0}
    r.record["turns"][0]["heard_text"] = "One"  # type: ignore[index]
    assert summarize("barge_in", 1, [r], [])["heard_text"]["mismatched"] == 1


def test_slow_speaker_cut_off_from_early_reply_or_answered_half_request() -> None:
    early = call([TurnResult(0, "x", early_replies=1)], [])
    half = call([TurnResult(0, "x")], [reply(2, "I need to cancel my", 3.0)])
    fine = call([TurnResult(0, "x")], [reply(2, "I need to cancel my appointment on Tuesday", 3.0)])
    assert summarize("slow_speaker", 3, [early, half, fine], [])["cut_offs"] == 2


def test_table_and_verdicts_print_without_data() -> None:
    row = summarize("turns", 1, [], [])
    text = format_table([row])
    assert "turns" in text and "late99" in text
    assert target_verdicts([row]) == []  # no numbers, no verdict


def test_short_answers_scripts_say_the_answers_and_the_row_has_the_end_of_turn_wait() -> None:
    scripts = [SCENARIOS["short_answers"].build(i) for i in range(len(SHORT_ANSWERS))]
    said = {u.text for s in scripts for u in s.utterances}
    assert said == set(SHORT_ANSWERS)  # every answer is said by some call
    assert all(s.extra_parameters["fake_transcripts"] == "|".join(u.text or "" for u in s.utterances) for s in scripts)
    calls = [
        call(
            [TurnResult(0, "No.", first_media_latency_ms=600.0)],
            [reply(2, "No.", 4.0, latency={"pipeline_overhead": 4.0, "end_of_turn": 260.0})],
        ),
        call(
            [TurnResult(0, "Thank you.", first_media_latency_ms=1800.0)],
            [reply(2, "Thank you.", 4.0, latency={"pipeline_overhead": 4.0, "end_of_turn": 1510.0})],
        ),
    ]
    row = summarize("short_answers", 2, calls, [])
    assert row["end_of_turn_ms"]["n"] == 2 and row["end_of_turn_ms"]["p50"] == pytest.approx(885.0)
    assert "short_answers" in format_table([row]) and "885/" in format_table([row])


def test_overhead_split_by_hop_from_the_call_records() -> None:
    hops = {"hop_brain": 1.0, "hop_orchestrator": 0.5, "hop_tts": 1.5, "hop_gateway": 2.0}
    slower = {k: v * 3 for k, v in hops.items()}
    calls = [
        call([], [reply(2, "hours?", 5.0, latency={"pipeline_overhead": 5.0, **hops})]),
        call([], [reply(2, "price?", 15.0, latency={"pipeline_overhead": 15.0, **slower})]),
        call([], [reply(2, "uh-huh", 99.0, latency={"pipeline_overhead": 99.0, "hop_gateway": 99.0})]),
    ]
    row = summarize("turns", 3, calls, [])
    split = row["overhead_hops_ms"]
    assert split["hop_gateway"]["n"] == 2  # a backchannel's answer is not a question's
    assert split["hop_gateway"]["p50"] == pytest.approx(4.0)
    assert split["hop_orchestrator"]["p50"] == pytest.approx(1.0)
    table = format_hops([row])
    assert "orchestrator" in table.splitlines()[1] and "4.0" in table.splitlines()[2]
