"""Per-agent webhooks through a real stack (nats-server and the five services as processes,
fake providers) to a real HTTP receiver on 127.0.0.1 that checks every signature: the
events of a simulated call arrive signed and in order, a receiver failing twice gets three
attempts visible in `GET /v1/calls/{id}/webhooks`, and a receiver that hangs holds up no
turn of the call."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import AUTH_TOKEN, own_stack, script_for, wait_until
from tests.integration.webhook_receiver import SECRET, SECRET_ENV, Receiver, agent_toml
from voxline.agents import BUNDLED_DIR
from voxline.devstack import DevStack
from voxline.simulator import CallResult, Utterance, run_call

pytestmark = pytest.mark.integration

QUESTION = "what are your opening hours"
ANALYSIS = """
[analysis]
instructions = "A test line."
[analysis.fields.callback_number]
type = "string"
description = "The number to call back."
[analysis.fields.topic]
type = "string"
enum = ["hours", "other"]
"""


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[DevStack]:
    agents = tmp_path_factory.mktemp("webhook-agents")
    shutil.copy(BUNDLED_DIR / "demo.toml", agents / "demo.toml")
    for path in ("ok", "flaky", "hang"):
        (agents / f"hooks-{path}.toml").write_text(agent_toml(path, f"http://127.0.0.1:{receiver.port}/{path}"))
    analysed = agent_toml("analysed", f"http://127.0.0.1:{receiver.port}/analysed") + ANALYSIS
    (agents / "hooks-analysed.toml").write_text(analysed)
    env = {
        "VOXLINE_AGENTS_DIR": str(agents),
        SECRET_ENV: SECRET,
        "VOXLINE_WEBHOOK_BACKOFF_S": "0.05",
        "VOXLINE_WEBHOOK_BACKOFF_MAX_S": "0.2",
        # Longer than a call: a request to /hang stays open until the test releases it.
        "VOXLINE_WEBHOOK_TIMEOUT_S": "30",
    }
    with own_stack(tmp_path_factory, "webhooks", env) as s:
        yield s


async def place(stack: DevStack, agent: str) -> tuple[CallResult, str]:
    script = script_for(Utterance(text=QUESTION))
    script.agent_id = agent
    result = await run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN)
    assert result.accepted and not result.errors, result.errors
    assert result.record is not None
    return result, str(result.record["call_id"])


async def api(stack: DevStack, path: str) -> Any:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{stack.gateway_url}{path}")
    assert response.status_code == 200, response.text
    return response.json()


def ended(receiver: Receiver, call_id: str, path: str) -> bool:
    return any(r.event["type"] == "call.ended" for r in receiver.of_call(call_id, path))


async def test_a_call_sends_started_each_final_line_and_ended_with_the_record_all_signed(
    stack: DevStack, receiver: Receiver
) -> None:
    _, call_id = await place(stack, "hooks-ok")

    async def done() -> bool:
        return ended(receiver, call_id, "/ok")

    await wait_until(done, 15, "call.ended at the receiver")
    got = receiver.of_call(call_id, "/ok")
    assert all(r.signed for r in got), "every delivery carries a valid Voxline-Signature"
    assert [r.event_id_header for r in got] == [r.event["id"] for r in got]
    assert len({r.event["id"] for r in got}) == len(got), "each event once"
    events = [r.event for r in got]
    assert events[0]["type"] == "call.started" and events[-1]["type"] == "call.ended"
    assert {e["agent_id"] for e in events} == {"hooks-ok"}
    assert set(events[0]) == {"id", "type", "created_at", "call_id", "agent_id", "data"}
    record = await api(stack, f"/v1/calls/{call_id}")
    lines = [(e["data"]["speaker"], e["data"]["text"]) for e in events if e["type"] == "transcript.final"]
    expected = []
    for turn in record["turns"]:
        if turn["caller_text"]:
            expected.append(("caller", turn["caller_text"]))
        if turn["reply_text"]:
            expected.append(("agent", turn["reply_text"]))
    assert lines == expected
    assert lines[0] == ("agent", "Hello, webhooks here.") and ("caller", QUESTION) in lines
    assert [s for s, _ in lines].count("agent") >= 2, "the greeting and the answer"
    sent = events[-1]["data"]["record"]
    assert sent["status"] == "ended" and sent["turns"] == record["turns"]
    assert sent["end_reason"] == record["end_reason"]

    deliveries = (await api(stack, f"/v1/calls/{call_id}/webhooks"))["deliveries"]
    assert [d["event_id"] for d in deliveries] == [e["id"] for e in events]
    assert all(d["state"] == "delivered" and len(d["attempts"]) == 1 for d in deliveries)
    assert all(d["attempts"][0]["status_code"] == 200 for d in deliveries)


async def test_a_receiver_failing_twice_gets_three_attempts_visible_in_the_api(
    stack: DevStack, receiver: Receiver
) -> None:
    _, call_id = await place(stack, "hooks-flaky")

    async def all_delivered() -> bool:
        if not ended(receiver, call_id, "/flaky"):
            return False
        deliveries = (await api(stack, f"/v1/calls/{call_id}/webhooks"))["deliveries"]
        return all(d["state"] == "delivered" for d in deliveries)

    await wait_until(all_delivered, 20, "every event delivered on its third attempt")
    deliveries = (await api(stack, f"/v1/calls/{call_id}/webhooks"))["deliveries"]
    assert {d["type"] for d in deliveries} == {"call.started", "transcript.final", "call.ended"}
    for delivery in deliveries:
        attempts = delivery["attempts"]
        assert [a["status_code"] for a in attempts] == [500, 500, 200], delivery
        assert [a["attempt"] for a in attempts] == [1, 2, 3]
        assert attempts[0]["error"] == "HTTP 500" and attempts[2]["error"] == ""
        assert attempts[0]["at_us"] < attempts[1]["at_us"] < attempts[2]["at_us"]
    got = receiver.of_call(call_id, "/flaky")
    assert all(r.signed for r in got)
    by_id = Counter(r.event["id"] for r in got)
    assert set(by_id.values()) == {3}, "each event was tried three times, no more"


async def test_a_receiver_that_never_answers_holds_up_no_turn(stack: DevStack, receiver: Receiver) -> None:
    baseline, _ = await place(stack, "hooks-ok")
    result, call_id = await place(stack, "hooks-hang")
    # The call is over and its question was answered while the receiver held the first
    # event's request open (it is open still): the turn did not wait for it.
    with receiver.lock:
        assert receiver.hanging == 1
    held = receiver.of_call(call_id, "/hang")
    assert [r.event["type"] for r in held] == ["call.started"]
    answered = [t.first_media_latency_ms for t in result.turns]
    usual = [t.first_media_latency_ms for t in baseline.turns]
    assert answered and answered[0] is not None and usual[0] is not None
    assert answered[0] < usual[0] + 1000, (answered, usual)
    replies = [t for t in (result.record or {})["turns"] if t["kind"] == "reply"]
    assert replies and replies[0]["caller_text"] == QUESTION and replies[0]["reply_text"]
    deliveries = (await api(stack, f"/v1/calls/{call_id}/webhooks"))["deliveries"]
    assert [(d["type"], d["state"], d["attempts"]) for d in deliveries] == [("call.started", "pending", [])]

    receiver.release.set()

    async def caught_up() -> bool:
        return ended(receiver, call_id, "/hang")

    await wait_until(caught_up, 15, "the rest of the call's events after the receiver answered")
    assert all(r.signed for r in receiver.of_call(call_id, "/hang"))


async def test_call_ended_comes_after_the_post_call_analysis_and_carries_it(
    stack: DevStack, receiver: Receiver
) -> None:
    _, call_id = await place(stack, "hooks-analysed")

    async def done() -> bool:
        return ended(receiver, call_id, "/analysed")

    await wait_until(done, 15, "call.ended at the receiver")
    got = receiver.of_call(call_id, "/analysed")
    assert all(r.signed for r in got)
    assert got[-1].event["type"] == "call.ended" and [r.event["type"] for r in got].count("call.ended") == 1
    sent = got[-1].event["data"]["record"]["analysis"]
    # The fake brain's analysis, which says what it is: no model read the call.
    assert sent["status"] == "done" and sent["provider"] == "fake", sent
    assert sent["summary"] == f"Fake analysis (no model): the caller said: {QUESTION}"
    assert sent["fields"] == {"callback_number": None, "topic": None}
    assert sent["duration_ms"] >= 0 and sent["error"] == ""
    record = await api(stack, f"/v1/calls/{call_id}")
    assert record["status"] == "ended" and record["analysis"] == sent
    # An agent without [analysis]: the record says so, and call.ended did not wait for one.
    _, plain = await place(stack, "hooks-ok")
    assert (await api(stack, f"/v1/calls/{plain}"))["analysis"] == {
        "status": "none",
        "summary": "",
        "fields": {},
        "provider": "",
        "model": "",
        "error": "",
        "duration_ms": 0.0,
        "usage": None,
    }
