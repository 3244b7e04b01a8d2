"""What `voxline chaos` and `soak` report of the callers' experience, from call results."""

from __future__ import annotations

from voxline.endurance import CallerView
from voxline.simulator.results import BargeInResult, CallResult, TurnResult


def _call(sid: str, answered: list[bool], heard: list[str], errors: list[str] | None = None) -> CallResult:
    texts = ["where can I park", "how much is a cleaning"]
    turns = [
        TurnResult(utterance=i, text=t, completed=ok, first_media_latency_ms=500.0 + 1000 * i)
        for i, (t, ok) in enumerate(zip(texts, answered, strict=True))
    ]
    record = {"turns": [{"kind": "reply", "caller_text": h} for h in heard]}
    return CallResult(call_sid=sid, accepted=True, turns=turns, record=record, errors=errors or [])


def test_completed_cut_turns_waits_and_lost_words() -> None:
    whole = _call("CA1", [True, True], ["Where can I park?", "How much is a cleaning?"])
    lossy = _call("CA2", [True, True], ["Where can I park?", "How much is a"])  # "cleaning" never heard
    cut = _call("CA3", [True, False], ["Where can I park?"], errors=["stream closed by the gateway"])
    stop = BargeInResult(1, 0.0, 2, latency_ms=90.0, stopped_by="clear", cancelled_audio_heard_after_ms=40)
    cut.barge_ins.append(stop)
    view = CallerView.of([whole, lossy, cut])
    assert (view.calls, view.completed, view.cut) == (3, 2, 1)
    assert (view.turns_asked, view.turns_answered) == (6, 5)
    assert view.longest_wait_ms == 1500.0
    assert view.words_lost == 1  # the cut call's record is not counted: it did not go on
    assert view.stale_ms == 40


def test_a_reply_cut_by_a_break_counts_as_answered_only_once_its_rest_was_heard_whole() -> None:
    said_on = _call("CA4", [True, False], ["Where can I park?", "How much is a cleaning?"])
    said_on.turns[1].turn_id = 7
    rest = {"turn_id": 108, "kind": "reply", "continues": 7, "reply_text": "It is 80 dollars.", "interrupted": False}
    assert said_on.record is not None
    said_on.record["turns"] += [{**rest, "heard_text": "It is 80 dollars."}]
    cut_again = _call("CA5", [True, False], ["Where can I park?", "How much is a cleaning?"])
    cut_again.turns[1].turn_id = 7
    assert cut_again.record is not None
    cut_again.record["turns"] += [{**rest, "heard_text": "It is", "interrupted": True}]
    view = CallerView.of([said_on, cut_again])
    assert (view.turns_answered, view.completed) == (3, 1)


def test_a_question_answered_again_whole_after_a_takeover_counts_as_answered() -> None:
    """The reply was cut before the snapshot held it; the new owner answered the question
    again under a newer turn. Heard to its end, it answers the caller; cut, it does not."""
    again = _call("CA6", [True, False], ["Where can I park?"])
    again.turns[1].turn_id = 2
    assert again.record is not None
    whole = {"turn_id": 103, "kind": "reply", "caller_text": "How much is a cleaning?", "reply_text": "80 dollars."}
    again.record["turns"].append({**whole, "heard_text": "80 dollars.", "interrupted": False})
    cut = _call("CA7", [True, False], ["Where can I park?"])
    cut.turns[1].turn_id = 2
    assert cut.record is not None
    cut.record["turns"].append({**whole, "heard_text": "80", "interrupted": True})
    older = _call("CA8", [True, False], ["Where can I park?"])
    older.turns[1].turn_id = 200  # the matching turn is older than the cut reply: not an answer to it
    assert older.record is not None
    older.record["turns"].append({**whole, "heard_text": "80 dollars.", "interrupted": False})
    view = CallerView.of([again, cut, older])
    assert (view.turns_answered, view.completed) == (4, 1)
