"""The post-call analysis piece by piece: the agent's `[analysis]` checked with the field
named, the strict `response_format` and prompt the brain sends, the model's JSON checked
against the schema, the webhook events held until the analysis is written (sent when it
failed too), and the orchestrator's side over a real nats-server: a brain that answers, one
that is missing, and a record the gateway changed meanwhile."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import msgspec
import pytest
from prometheus_client import REGISTRY

from proto.messages import AnalysisField, AnalysisRequest, AnalysisResult, TranscriptLine
from proto.records import CALL_RECORDS_BUCKET, CallAnalysis, CallRecord, TurnRecord
from services.brain.analysis import (
    CUT,
    FAKE_PREFIX,
    AnalysisInvalid,
    AnalysisService,
    fake_analysis,
    messages,
    parse_answer,
    response_format,
    transcript_text,
)
from services.brain.providers.fake import FakeBrainProvider
from services.gateway.agents_api import field_of
from services.orchestrator import analysis as orchestrator_analysis
from services.orchestrator.analysis import Analyst
from tests.unit.bus_probe import Probe, settle
from voxline.agents import Agent, AgentStore, InvalidAgent
from voxline.bus import Bus
from voxline.config import BrainSettings
from voxline.webhooks.events import concluded, implied_events

BASE = {"name": "Desk", "greeting": "Hello.", "system_prompt": "You are a test agent."}
FIELDS = {
    "callback_number": AnalysisField(type="string", description="The number to call back."),
    "wants_appointment": AnalysisField(type="boolean"),
    "topic": AnalysisField(type="string", enum=["prices", "other"]),
    "party_size": AnalysisField(type="integer"),
}


def agent_with(analysis: dict[str, Any] | None) -> Agent:
    return AgentStore().parse({**BASE, "analysis": analysis}, "desk")


def request(summary: bool = True, lines: list[TranscriptLine] | None = None, **kw: Any) -> AnalysisRequest:
    said = [
        TranscriptLine(speaker="agent", text="Hello.", turn_id=1),
        TranscriptLine(speaker="caller", text="Call me back on 555 0101.", turn_id=2),
    ]
    return AnalysisRequest(
        call_id=kw.pop("call_id", "CA1"),
        agent_id="desk",
        lines=said if lines is None else lines,
        summary=summary,
        fields=kw.pop("fields", FIELDS),
        timeout_ms=kw.pop("timeout_ms", 5000),
        requested_at_us=1,
        **kw,
    )


# --- the agent's [analysis] -------------------------------------------------------------


@pytest.mark.parametrize(
    ("analysis", "field"),
    [
        ({"fields": {"cb": {"type": "date"}}}, "analysis.fields.cb.type"),
        ({"fields": {"cb": {"type": "string", "minimum": 1}}}, "analysis.fields.cb.minimum"),
        ({"fields": {"cb": {"type": "string", "description": 3}}}, "analysis.fields.cb.description"),
        ({"fields": {"n": {"type": "integer", "enum": [1, 2.5]}}}, "analysis.fields.n.enum"),
        ({"fields": {"ok": {"type": "boolean", "enum": [True]}}}, "analysis.fields.ok.enum"),
        ({"fields": {"t": {"type": "string", "enum": ["a", "a"]}}}, "analysis.fields.t.enum"),
        ({"fields": {"summary": {"type": "string"}}}, "analysis.fields.summary"),
        ({"fields": {"1st": {"type": "string"}}}, "analysis.fields"),
        ({"summary": False}, "analysis.summary"),
        ({"instructions": "x" * 2001}, "analysis.instructions"),
        ({"bogus": 1}, "analysis"),
    ],
)
def test_a_bad_analysis_makes_the_agent_invalid_naming_the_field(analysis: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidAgent) as caught:
        agent_with(analysis)
    assert field_of(str(caught.value)) == field, str(caught.value)


def test_an_analysis_section_is_checked_into_field_specs() -> None:
    agent = agent_with(
        {"instructions": "A clinic.", "fields": {"topic": {"type": "string", "enum": ["a", "b"], "description": "d"}}}
    )
    assert agent.analysis is not None and agent.analysis.summary
    assert agent.analysis.specs() == {"topic": AnalysisField(type="string", description="d", enum=["a", "b"])}
    assert agent_with(None).analysis is None
    demo = AgentStore().get("demo").analysis
    assert demo is not None and {"callback_number", "wants_appointment"} <= set(demo.fields)


# --- what the model is asked ------------------------------------------------------------


def test_the_response_format_is_a_strict_schema_of_the_summary_and_every_field_nullable() -> None:
    rf = response_format(request())
    assert rf["type"] == "json_schema"
    spec = rf["json_schema"]
    assert spec["name"] == "call_analysis" and spec["strict"] is True
    schema = spec["schema"]
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["required"] == ["summary", "callback_number", "wants_appointment", "topic", "party_size"]
    assert schema["properties"]["summary"]["type"] == "string"
    assert schema["properties"]["callback_number"] == {
        "type": ["string", "null"],
        "description": "The number to call back.",
    }
    assert schema["properties"]["wants_appointment"] == {"type": ["boolean", "null"]}
    assert schema["properties"]["topic"] == {"type": ["string", "null"], "enum": ["prices", "other", None]}
    without = response_format(request(summary=False))["json_schema"]["schema"]
    assert "summary" not in without["properties"] and "summary" not in without["required"]


def test_the_prompt_carries_the_transcript_with_speakers_and_the_owners_instructions() -> None:
    system, user = messages(request(instructions="A dental clinic.", end_reason="caller hung up"), 6000)
    assert system["role"] == "system" and "JSON" in system["content"] and "null" in system["content"]
    assert "The agent's owner adds: A dental clinic." in system["content"]
    assert "summary:" in system["content"]
    assert user["content"] == (
        "The call ended (caller hung up). Transcript:\nAgent: Hello.\nCaller: Call me back on 555 0101."
    )
    assert "summary:" not in messages(request(summary=False), 6000)[0]["content"]


def test_a_long_transcript_keeps_its_start_and_its_end() -> None:
    lines = [TranscriptLine(speaker="caller", text=f"line {i:03d} " + "x" * 80, turn_id=i) for i in range(200)]
    text = transcript_text(lines, 2000)
    assert len(text) <= 2000 and CUT in text
    kept = text.split("\n")
    assert kept[0].startswith("Caller: line 000") and kept[-1].startswith("Caller: line 199")
    assert transcript_text(lines[:3], 2000).count("\n") == 2  # short: whole


# --- what the model answered ------------------------------------------------------------

GOOD = {"summary": " Wants a call back. ", "callback_number": "5550101", "wants_appointment": None, "topic": "other"}


def test_a_valid_answer_gives_the_summary_and_the_fields() -> None:
    summary, fields = parse_answer(request(), json.dumps({**GOOD, "party_size": 3.0}))
    assert summary == "Wants a call back."
    assert fields == {"callback_number": "5550101", "wants_appointment": None, "topic": "other", "party_size": 3}


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("not json {", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "topic"} | {"party_size": 1}), "lacks 'topic'"),
        (json.dumps({**GOOD, "party_size": 1, "mood": "happy"}), "key(s) the schema does not"),
        (json.dumps({**GOOD, "party_size": "three"}), "'party_size' is not a integer (str)"),
        (json.dumps({**GOOD, "party_size": True}), "'party_size' is not a integer (bool)"),
        (json.dumps({**GOOD, "party_size": 1, "topic": "weather"}), "not one of its enum"),
        (json.dumps({**GOOD, "party_size": 1, "wants_appointment": "yes"}), "not a boolean"),
        (json.dumps({**GOOD, "party_size": 1, "summary": 7}), "summary is not a string"),
    ],
)
def test_an_answer_outside_the_schema_is_refused_with_the_reason(answer: str, why: str) -> None:
    with pytest.raises(AnalysisInvalid) as caught:
        parse_answer(request(), answer)
    assert why in str(caught.value)


def test_the_fake_analysis_says_it_is_fake_and_leaves_every_field_null() -> None:
    result = fake_analysis(request())
    assert result.status == "done" and result.provider == "fake"
    assert result.summary == f"{FAKE_PREFIX}the caller said: Call me back on 555 0101."
    assert result.fields == dict.fromkeys(FIELDS)
    assert fake_analysis(request(lines=[])).summary == f"{FAKE_PREFIX}the caller said nothing."


# --- call.ended waits for the analysis --------------------------------------------------


def ended_record(analysis: CallAnalysis | None) -> CallRecord:
    turns = [TurnRecord(turn_id=1, kind="greeting", reply_text="Hello."), TurnRecord(turn_id=2, kind="reply")]
    turns[1].caller_text, turns[1].reply_text = "Call me back.", "Sure."
    record = CallRecord(call_id="CA1", call_sid="CA1", agent_id="desk", status="ended", started_at_us=1, turns=turns)
    record.ended_at_us, record.analysis = 2, analysis
    return record


def test_call_ended_waits_while_the_analysis_is_pending_and_then_carries_it() -> None:
    pending = ended_record(CallAnalysis(status="pending"))
    events = implied_events(pending, set(), 5)
    assert [e.type for e in events] == ["call.started", "transcript.final", "transcript.final", "transcript.final"]
    assert not concluded(pending)
    done = ended_record(CallAnalysis(status="done", summary="Wants a call back.", fields={"cb": "5550101"}))
    later = implied_events(done, {e.id for e in events}, 6)
    assert [e.type for e in later] == ["call.ended"]
    sent = json.loads(later[0].body)["data"]["record"]["analysis"]
    assert sent["status"] == "done" and sent["summary"] == "Wants a call back." and sent["fields"] == {"cb": "5550101"}


@pytest.mark.parametrize(
    "analysis", [CallAnalysis(status="failed", error="no brain"), CallAnalysis(status="none"), None]
)
def test_call_ended_is_sent_when_the_analysis_failed_or_none_was_asked(analysis: CallAnalysis | None) -> None:
    record = ended_record(analysis)
    assert concluded(record)
    assert implied_events(record, set(), 5)[-1].type == "call.ended"


def test_the_ended_record_is_marked_pending_only_for_an_agent_that_asks() -> None:
    record = ended_record(None)
    orchestrator_analysis.mark(record, agent_with({"fields": {"cb": {"type": "string"}}}))
    assert record.analysis == CallAnalysis(status="pending")
    plain = ended_record(None)
    orchestrator_analysis.mark(plain, agent_with(None))
    assert plain.analysis == CallAnalysis(status="none")
    live = ended_record(None)
    live.status = "in-progress"
    orchestrator_analysis.mark(live, agent_with({}))
    assert live.analysis is None
    request_ = orchestrator_analysis.request_for(ended_record(None), agent_with({"instructions": "i"}), 7.5)
    assert [(line.speaker, line.text) for line in request_.lines] == [
        ("agent", "Hello."),
        ("caller", "Call me back."),
        ("agent", "Sure."),
    ]
    assert request_.timeout_ms == 7500 and request_.instructions == "i" and request_.summary


# --- the orchestrator's side, over a real nats-server ----------------------------------


async def stored(bus: Bus, record: CallRecord) -> None:
    await bus.create_bucket(CALL_RECORDS_BUCKET, ttl_s=3600)
    await bus.kv_put(CALL_RECORDS_BUCKET, record.call_id, record)


async def analysed(bus: Bus, record: CallRecord, agent: Agent, timeout_s: float = 5.0) -> CallRecord:
    offered: asyncio.Future[CallRecord] = asyncio.get_running_loop().create_future()
    finished = asyncio.Event()

    async def let_go() -> None:  # the worker releases the call's lease here
        assert offered.done(), "the lease goes after the analysed record was offered"
        finished.set()

    analyst = Analyst(bus, timeout_s)
    analyst.start(record, agent, offered.set_result, let_go)
    analyst.start(record, agent, offered.set_result, let_go)  # once per call
    assert analyst.running == [record.call_id]
    got = await asyncio.wait_for(offered, timeout_s + 5)
    await asyncio.wait_for(finished.wait(), 5)
    return got


async def test_with_no_brain_running_the_analysis_fails_fast_and_is_still_offered(worker_bus: Bus) -> None:
    record = ended_record(CallAnalysis(status="pending"))
    record.call_id = "CA-nobrain"
    await stored(worker_bus, record)
    started = time.monotonic()
    failures = REGISTRY.get_sample_value("voxline_call_analyses_total", {"status": "failed"}) or 0
    got = await analysed(worker_bus, record, agent_with({}))
    assert REGISTRY.get_sample_value("voxline_call_analyses_total", {"status": "failed"}) == failures + 1
    assert got.analysis is not None and got.analysis.status == "failed"
    assert got.analysis.error == "no brain worker is running"
    assert time.monotonic() - started < 3
    saved = await worker_bus.kv_get(CALL_RECORDS_BUCKET, record.call_id, CallRecord)
    assert saved is not None and saved.analysis == got.analysis
    assert [e.type for e in implied_events(got, set(), 9)][-1] == "call.ended"


async def test_a_brain_that_never_answers_times_out_into_a_failed_analysis(worker_bus: Bus, probe: Probe) -> None:
    from proto import subjects

    heard: list[str] = []

    async def silent(msg: Any) -> None:  # takes the request, never answers
        heard.append(msg.subject)

    sub = await probe.bus.nc.subscribe(subjects.BRAIN_ANALYSE, cb=silent)
    await settle(probe.bus)
    try:
        record = ended_record(CallAnalysis(status="pending"))
        record.call_id = "CA-silent"
        await stored(worker_bus, record)
        got = await analysed(worker_bus, record, agent_with({}), timeout_s=0.5)
        assert heard == [subjects.BRAIN_ANALYSE]
        assert got.analysis is not None and got.analysis.status == "failed"
        assert got.analysis.error == "no answer from a brain worker within 0.5s"
    finally:
        await sub.unsubscribe()


async def test_a_brain_worker_answers_and_the_gateways_late_write_is_kept(
    worker_bus: Bus, probe: Probe, nats_server: Any
) -> None:
    brain_bus = Bus("brain-under-test")
    await brain_bus.connect(nats_server.url)
    service = AnalysisService(brain_bus, FakeBrainProvider(BrainSettings()))
    await service.start()
    await settle(brain_bus)  # the server has the subscription before the request
    try:
        record = ended_record(CallAnalysis(status="pending"))
        record.call_id = "CA-brain"
        await stored(worker_bus, record)
        # The gateway writes Twilio's transfer outcome after the orchestrator's last write.
        late = msgspec.structs.replace(record, transfer_status="busy", end_reason="transfer busy")
        await probe.bus.kv_put(CALL_RECORDS_BUCKET, record.call_id, late)
        agent = agent_with({"fields": {"cb": {"type": "string"}}})
        got = await analysed(worker_bus, record, agent)
        assert got.analysis is not None and got.analysis.status == "done", got.analysis
        assert got.analysis.summary == f"{FAKE_PREFIX}the caller said: Call me back."
        assert got.analysis.fields == {"cb": None} and got.analysis.provider == "fake"
        saved = await worker_bus.kv_get(CALL_RECORDS_BUCKET, record.call_id, CallRecord)
        assert saved is not None and saved.transfer_status == "busy" and saved.analysis == got.analysis
    finally:
        await service.stop(1.0)
        await brain_bus.close()


async def test_the_brain_answers_failed_when_its_provider_cannot_analyse(worker_bus: Bus, probe: Probe) -> None:
    class Mute:
        name = "mute"

        async def load(self) -> None: ...

        async def close(self) -> None: ...

    service = AnalysisService(worker_bus, Mute())
    await service.start()
    await settle(worker_bus)
    try:
        from proto import subjects

        reply = await probe.bus.request(subjects.BRAIN_ANALYSE, request(), timeout=5)
        assert isinstance(reply, AnalysisResult) and reply.status == "failed"
        assert reply.error == "brain provider mute cannot analyse calls"
    finally:
        await service.stop(1.0)


def test_voxline_calls_get_shows_the_analysis() -> None:
    from voxline.calls_cli import event_line, show_record

    done = {"status": "done", "summary": "Wants a call back.", "fields": {"cb": "5550101", "ok": None}}
    lines = show_record({"call_id": "CA1", "analysis": {**done, "provider": "openai", "model": "gpt-4o"}})
    assert lines[-4:] == [
        "analysis  done (openai gpt-4o, 0 ms)",
        "  summary: Wants a call back.",
        '  cb: "5550101"',
        "  ok: null",
    ]
    failed = show_record({"call_id": "CA1", "analysis": {"status": "failed", "error": "no brain worker is running"}})
    assert failed[-1] == "analysis  failed: no brain worker is running"
    assert not [line for line in show_record({"analysis": {"status": "none"}}) if line.startswith("analysis")]
    ended = event_line("call.ended", {"record": {"end_reason": "caller hung up", "analysis": done}})
    assert ended.endswith("caller hung up  length -  analysis done")


async def test_an_analysis_already_written_is_offered_not_asked_again(worker_bus: Bus) -> None:
    # A dead owner wrote the analysis but died before letting the lease go: its successor,
    # resuming from the snapshot (pending), finds it written and only offers it.
    record = ended_record(CallAnalysis(status="pending"))
    record.call_id = "CA-written"
    written = msgspec.structs.replace(record, analysis=CallAnalysis(status="done", summary="Written.", provider="x"))
    await stored(worker_bus, written)
    got = await analysed(worker_bus, record, agent_with({}))  # no brain runs: asking would fail
    assert got.analysis == written.analysis


async def test_the_wait_for_a_free_slot_counts_against_the_requests_timeout(
    worker_bus: Bus, probe: Probe, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proto import subjects
    from services.brain import analysis as brain_analysis

    class Slow:
        name = "slow"

        async def analyse(self, request: AnalysisRequest) -> AnalysisResult:
            await asyncio.sleep(0.5)  # within 1.3 s less the margin; twice is not
            return fake_analysis(request)

        async def load(self) -> None: ...

        async def close(self) -> None: ...

    monkeypatch.setattr(brain_analysis, "MAX_CONCURRENT", 1)
    service = AnalysisService(worker_bus, Slow())
    await service.start()
    await settle(worker_bus)
    try:
        first, second = await asyncio.gather(
            *(
                probe.bus.request(subjects.BRAIN_ANALYSE, request(timeout_ms=1300, call_id=c), timeout=5)
                for c in ("CA-first", "CA-second")
            )
        )
        results = {r.call_id: r for r in (first, second) if isinstance(r, AnalysisResult)}
        assert {c: r.status for c, r in results.items()} == {"CA-first": "done", "CA-second": "failed"}
        assert results["CA-second"].error.startswith("the model took longer than")
    finally:
        await service.stop(1.0)
