"""Turn-taking and barge-in through the real services: what the caller hears."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from proto.messages import BrainTurn, PlaybackPause, PlaybackResume, TurnCancel
from tests.integration.conftest import AUTH_TOKEN, BusSpy, script_for
from voxline.bench.metrics import AUDIBLE_MS
from voxline.devstack import DevStack
from voxline.simulator import CallResult, CallScript, Utterance, run_call

pytestmark = pytest.mark.integration

LONG_QUESTION = "tell me everything about your clinic please"
TTS_CHUNK_MS = 100


async def call(stack: DevStack, script: CallScript) -> CallResult:
    result = await run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN)
    assert result.accepted and not result.errors, result.errors
    return result


def lost_and_repeated(result: CallResult, turn_id: int) -> tuple[list[str], float]:
    """Chunks of a turn never fully played, and ms played twice (cut, then replayed)."""
    by_mark: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for p in result.played:
        if p.turn_id == turn_id and p.mark:
            by_mark[p.mark].append((p.end_ms - p.start_ms, p.cut))
    lost = [m for m, plays in by_mark.items() if all(cut for _, cut in plays)]
    repeated = sum(ms for plays in by_mark.values() if any(not c for _, c in plays) for ms, c in plays if c)
    return lost, repeated


def reply_turns(result: CallResult) -> list[dict[str, object]]:
    assert result.record is not None
    return [t for t in result.record["turns"] if t["kind"] == "reply"]


async def test_backchannel_pauses_then_resumes_with_nothing_lost_and_no_new_answer(
    stack: DevStack, bus_spy: BusSpy
) -> None:
    result = await call(
        stack,
        script_for(
            Utterance(text=LONG_QUESTION),
            Utterance(text="uh-huh", barge_in_after_ms=700, expects_reply=False),
        ),
    )
    replies = reply_turns(result)
    assert len(replies) == 1, "a backchannel must not get an answer of its own"
    reply = replies[0]
    assert reply["paused"] == 1 and not reply["interrupted"]
    assert reply["heard_text"] == reply["reply_text"]
    turn_id = int(str(reply["turn_id"]))
    assert [m.turn_id for m in bus_spy.of_type(PlaybackPause)] == [turn_id]
    assert [m.turn_id for m in bus_spy.of_type(PlaybackResume)] == [turn_id]
    assert not [c for c in bus_spy.of_type(TurnCancel) if c.call_id == result.call_sid]
    assert len([b for b in bus_spy.of_type(BrainTurn) if b.call_id == result.call_sid]) == 1
    lost, repeated_ms = lost_and_repeated(result, turn_id)
    assert lost == []
    assert repeated_ms <= TTS_CHUNK_MS  # at most the one chunk the clear cut mid-way
    # Laid on the sentence's time axis, the resumed audio starts where the caller left off:
    # the part of the cut chunk already heard is not sent again (only the few ms the `clear`
    # took to reach the caller's side overlap; without the cut it is most of a chunk).
    first = result.turns[0]
    assert first.lost_audio_ms is not None and first.lost_audio_ms <= AUDIBLE_MS, first.lost_audio_ms
    assert first.repeated_audio_ms is not None and first.repeated_audio_ms <= AUDIBLE_MS, first.repeated_audio_ms


async def test_noise_over_the_reply_is_a_false_interruption_and_the_reply_resumes(stack: DevStack) -> None:
    rng = np.random.default_rng(7)
    cough = (rng.standard_normal(2400) * 6000).astype(np.int16)  # 300 ms burst, no words
    script = CallScript(
        utterances=[Utterance(text=LONG_QUESTION), Utterance(pcm8k=cough, barge_in_after_ms=700, expects_reply=False)],
        # The fake STT hears no words in the cough: an empty transcript.
        extra_parameters={"fake_transcripts": f"{LONG_QUESTION}|"},
    )
    result = await call(stack, script)
    replies = reply_turns(result)
    assert len(replies) == 1
    assert replies[0]["paused"] == 1 and not replies[0]["interrupted"]
    assert replies[0]["heard_text"] == replies[0]["reply_text"]


async def test_real_interruption_keeps_only_heard_words_in_the_history(stack: DevStack, bus_spy: BusSpy) -> None:
    result = await call(
        stack,
        script_for(
            Utterance(text=LONG_QUESTION),
            Utterance(text="stop, what about Saturday", barge_in_after_ms=900),
        ),
    )
    first, second = reply_turns(result)
    assert first["interrupted"] and first["cancel_reason"] == "barge_in"
    heard, full = str(first["heard_text"]), str(first["reply_text"])
    assert heard and full.startswith(heard) and len(heard) < len(full)
    assert result.barge_ins and result.barge_ins[0].cancelled_audio_heard_after_ms == 0
    # The brain request for the interruption carries the heard part only.
    requests = [b for b in bus_spy.of_type(BrainTurn) if b.call_id == result.call_sid]
    assert requests[-1].user_text == "stop, what about Saturday"
    assistant = [h.content for h in requests[-1].history if h.role == "assistant"]
    assert assistant[-1] == heard
    assert second["caller_text"] == "stop, what about Saturday"


async def test_preemptive_reply_is_cancelled_when_the_caller_goes_on(stack: DevStack, bus_spy: BusSpy) -> None:
    slow = Utterance(parts=["I need to cancel my", "appointment on Tuesday"], gap_ms=700)
    result = await call(stack, script_for(slow))
    replies = reply_turns(result)
    assert [r["caller_text"] for r in replies] == ["I need to cancel my appointment on Tuesday"]
    assert result.turns[0].early_replies == 0, "the agent spoke before the caller had finished"
    cancels = [c for c in bus_spy.of_type(TurnCancel) if c.call_id == result.call_sid]
    requests = [b for b in bus_spy.of_type(BrainTurn) if b.call_id == result.call_sid]
    assert [r.user_text for r in requests] == ["I need to cancel my", "I need to cancel my appointment on Tuesday"]
    assert [c.reason for c in cancels] == ["caller_continued"]


async def test_silent_caller_gets_a_reprompt_then_a_polite_hang_up(stack: DevStack) -> None:
    result = await run_call(
        stack.gateway_url, CallScript(agent_id="quick-idle", trailing_silence_ms=15_000), auth_token=AUTH_TOKEN
    )
    assert result.accepted
    assert result.closed_by_gateway
    assert result.record is not None
    assert [t["kind"] for t in result.record["turns"]] == ["greeting", "reprompt", "goodbye"]
    assert result.record["turns"][1]["heard_text"] == "Are you still there?"


async def test_dtmf_digit_ends_the_turn_and_reaches_the_brain(stack: DevStack, bus_spy: BusSpy) -> None:
    result = await call(stack, CallScript(utterances=[Utterance(dtmf="1")], trailing_silence_ms=4000))
    requests = [b for b in bus_spy.of_type(BrainTurn) if b.call_id == result.call_sid]
    assert requests and "pressed 1" in requests[0].user_text
    assert any("pressed 1" in str(t["caller_text"]) for t in reply_turns(result))
