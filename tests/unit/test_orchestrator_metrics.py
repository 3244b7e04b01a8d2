"""The call's metrics come from its record: each stage histogram gets the very numbers the
record's turn has, once per turn, and the call's outcome once per call. Event sequences
through the real core, observed the way the actor's shell does (`RecordMetrics`)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client import REGISTRY

from proto.messages import CallStopped, SpeechStarted
from proto.records import CallRecord
from services.orchestrator.effects import SaveRecord
from services.orchestrator.metrics import RecordMetrics, outcome
from services.orchestrator.timers import TimerKind
from tests.unit.orchestrator_driver import CALL_ID, Driver
from voxline.agents.turn_options import TurnOptions

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def observe_saves(d: Driver, metrics: RecordMetrics) -> None:
    """What the actor does with each SaveRecord effect."""
    for effect in d.effects:
        if isinstance(effect, SaveRecord):
            metrics.saw(effect.record)
    d.effects.clear()


def test_each_concluded_turn_is_observed_once_with_the_records_own_numbers() -> None:
    d = Driver()
    metrics = RecordMetrics(d.call.record, TRACEPARENT)
    before_count = sample("voxline_turn_latency_seconds_count")
    before_sum = sample("voxline_turn_latency_seconds_sum")
    before_eot = sample("voxline_turn_stage_seconds_count", stage="end_of_turn", kind="reply")
    before_turns = sample("voxline_turns_total", kind="reply")
    d.greet()
    reply = d.answered("what are your hours", ["We open at nine."])
    d.play(reply)
    observe_saves(d, metrics)
    observe_saves(d, metrics)  # a later write of the same record counts nothing again
    [record] = [t for t in d.call.record.turns if t.kind == "reply"]
    assert sample("voxline_turn_latency_seconds_count") == before_count + 1
    assert sample("voxline_turn_latency_seconds_sum") - before_sum == pytest.approx(
        record.latency["first_media_sent"] / 1000
    )
    assert sample("voxline_turn_stage_seconds_count", stage="end_of_turn", kind="reply") == before_eot + 1
    assert sample("voxline_turns_total", kind="reply") == before_turns + 1


def test_pause_on_barge_in_records_and_observes_the_voice_stop_from_speech_onset() -> None:
    d = Driver()
    metrics = RecordMetrics(d.call.record, TRACEPARENT)
    before = sample("voxline_barge_in_voice_stop_seconds_count")
    before_sum = sample("voxline_barge_in_voice_stop_seconds_sum")
    before_interruptions = sample("voxline_interruptions_total")
    d.greet()
    reply = d.answered("tell me everything", ["First sentence here.", "Second sentence here."])
    d.mark(reply.turn_id, 0, 500)
    # The STT reports the onset 80 ms after the audio it began in arrived.
    d.send(SpeechStarted(call_id=CALL_ID, at_us=d.now_us - 80_000))
    d.wait(300)
    d.final("stop, I have a question")
    observe_saves(d, metrics)
    [record] = [t for t in d.call.record.turns if t.interrupted]
    assert record.latency["barge_in_voice_stop"] == 80.0
    assert sample("voxline_barge_in_voice_stop_seconds_count") == before + 1
    assert sample("voxline_barge_in_voice_stop_seconds_sum") - before_sum == pytest.approx(0.08)
    assert sample("voxline_interruptions_total") == before_interruptions + 1


def test_words_only_stops_the_voice_at_the_words_not_at_the_first_sound() -> None:
    d = Driver(TurnOptions(barge_in="words_only"))
    d.greet()
    reply = d.answered("tell me everything", ["First sentence here.", "Second sentence here."])
    d.mark(reply.turn_id, 0, 500)
    d.speech_started()
    d.wait(250)  # the voice plays on until words are recognised
    d.final("stop, I have a question")
    [record] = [t for t in d.call.record.turns if t.interrupted]
    assert record.latency["barge_in_voice_stop"] == 250.0


def test_talking_before_the_voice_plays_is_no_voice_stop() -> None:
    d = Driver()
    d.greet()
    d.says("what are your hours")
    d.fire(TimerKind.END_OF_TURN)
    reply = d.turn
    d.speech_started()  # over the reply, before any of its audio went out
    assert "barge_in_voice_stop" not in reply.latency_ms()


def test_the_call_outcome_is_counted_once_when_the_record_ends() -> None:
    d = Driver()
    metrics = RecordMetrics(d.call.record, TRACEPARENT)
    before = sample("voxline_calls_total", outcome="caller_hangup")
    d.greet()
    d.send(CallStopped(call_id=CALL_ID, reason="caller hung up", at_us=d.now_us))
    observe_saves(d, metrics)
    metrics.saw(d.call.record)
    assert sample("voxline_calls_total", outcome="caller_hangup") == before + 1


def test_the_stages_of_reply_and_greeting_turns_exist_before_the_first_turn() -> None:
    # A series born at its first observations has no rate: a fresh orchestrator's first
    # turns would be invisible to every quantile on the dashboard. A fresh interpreter, so
    # no turn observed by another test creates the series.
    check = (
        "from prometheus_client import REGISTRY\n"
        "import services.orchestrator.metrics\n"
        "count = lambda **labels: REGISTRY.get_sample_value('voxline_turn_stage_seconds_count', labels)\n"
        "assert count(stage='pipeline_overhead', kind='reply') == 0\n"
        "assert count(stage='barge_in_voice_stop', kind='reply') == 0\n"
        "assert count(stage='first_media_sent', kind='greeting') == 0\n"
        "assert REGISTRY.get_sample_value('voxline_turns_total', {'kind': 'apology'}) == 0\n"
    )
    subprocess.run([sys.executable, "-c", check], check=True)


def test_outcomes_are_a_closed_set_and_every_one_exists_at_zero() -> None:
    record = CallRecord(call_id="c", call_sid="c", agent_id="a", status="ended", started_at_us=0)
    assert outcome(record) == "other"
    record.end_reason = "transfer failed"
    assert outcome(record) == "transfer_failed"
    for name in ("caller_hangup", "agent_hangup", "transferred", "transfer_failed", "failed", "other"):
        assert REGISTRY.get_sample_value("voxline_calls_total", {"outcome": name}) is not None


def test_a_resumed_record_does_not_count_its_turns_again() -> None:
    d = Driver()
    d.greet()
    before = sample("voxline_turns_total", kind="greeting")
    metrics = RecordMetrics(d.call.record, TRACEPARENT)  # a new owner, from the snapshot
    metrics.saw(d.call.record)
    assert sample("voxline_turns_total", kind="greeting") == before
