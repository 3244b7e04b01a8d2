"""One simulated call is one trace: spans from all five services, linked and in order,
exported over OTLP/HTTP to a real receiver (tests/emulators/otlp.py).

The stack here is its own, started with OTEL_EXPORTER_OTLP_ENDPOINT pointing at the
receiver; it is stopped before the assertions, so every service has flushed its spans
(each process shuts its span processor down as it stops), and nothing waits on a timer.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.emulators.otlp import OtlpReceiver, ReceivedSpan
from tests.integration.conftest import AUTH_TOKEN, own_stack, script_for
from voxline.devstack import DevStack
from voxline.simulator import Utterance, run_call

pytestmark = pytest.mark.integration

SERVICES = {"voxline-gateway", "voxline-stt", "voxline-brain", "voxline-tts", "voxline-orchestrator"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def traced_stack(receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        # Whatever the runner's environment says, each service names itself and keeps every trace.
        "OTEL_SERVICE_NAME": "",
        "OTEL_RESOURCE_ATTRIBUTES": "",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_SDK_DISABLED": "false",
    }
    with own_stack(tmp_path_factory, "traced", env) as stack:
        yield stack


def _parent_of(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> ReceivedSpan:
    return by_id[span.parent_span_id]


async def test_one_call_is_one_trace_with_spans_of_all_five_services(
    traced_stack: DevStack, receiver: OtlpReceiver
) -> None:
    script = script_for(
        Utterance(text="tell me everything about your clinic"),
        Utterance(text="stop, I have a question", barge_in_after_ms=600),
    )
    result = await run_call(traced_stack.gateway_url, script, auth_token=AUTH_TOKEN)
    assert result.accepted and not result.errors, result.errors
    assert result.clears >= 1 and result.record is not None
    traced_stack.stop()  # each service flushes what it still holds as it stops

    of_call = [s for s in receiver.spans() if s.attributes.get("call_id") == result.call_sid]
    assert len({s.trace_id for s in of_call}) == 1, "the call's spans are in more than one trace"
    trace_id = of_call[0].trace_id
    spans = [s for s in receiver.spans() if s.trace_id == trace_id]
    assert receiver.refused == 0
    assert {s.service for s in spans} == SERVICES

    # Linked: one root (the gateway's media stream); every other span's parent is in the trace.
    by_id = {s.span_id: s for s in spans}
    [root] = [s for s in spans if not s.parent_span_id]
    assert (root.service, root.name) == ("voxline-gateway", "media stream")
    for span in spans:
        if span is root:
            continue
        assert span.parent_span_id in by_id, f"{span.service} {span.name}: parent not in the trace"
        parent = _parent_of(span, by_id)
        # Ordered: a child starts within its parent's interval (all processes share this clock).
        assert parent.start_ns <= span.start_ns <= parent.end_ns, f"{span.name} starts outside {parent.name}"
        assert span.start_ns <= span.end_ns

    def named(service: str, name: str) -> list[ReceivedSpan]:
        return [s for s in spans if s.service == f"voxline-{service}" and s.name == name]

    [call] = named("orchestrator", "call")
    assert _parent_of(call, by_id) is root
    turns = sorted(named("orchestrator", "turn"), key=lambda s: s.start_ns)
    assert all(_parent_of(t, by_id) is call for t in turns)
    turn_ids = [int(t.attributes["turn_id"]) for t in turns]
    assert turn_ids == sorted(turn_ids) and len(set(turn_ids)) == len(turn_ids)
    assert {t["turn_id"] for t in result.record["turns"]} <= set(turn_ids)  # the greeting and each reply
    assert any(t.attributes.get("cancelled") for t in turns)  # the barged-in reply

    replies = named("brain", "reply")
    assert len(replies) == 2 and all(_parent_of(r, by_id) in turns for r in replies)
    assert all("first token" in r.events for r in replies)
    sentences = named("tts", "sentence")
    assert sentences and all(_parent_of(s, by_id) in turns for s in sentences)
    utterances = named("stt", "utterance")
    assert len(utterances) >= 2 and all(_parent_of(u, by_id) is call for u in utterances)
    assert named("gateway", "call start") and named("gateway", "first media") and named("gateway", "clear")
