"""Webhooks outlive the call's owner: two orchestrators (two of every service), the owner is
killed (SIGKILL) while the receiver holds open its delivery of the caller's first line, and
the orchestrator that takes the call over resends that one (same id, same bytes), sends none
of those already delivered again, and sends every later event of the call. Real processes,
a real nats-server, a real HTTP receiver."""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import AUTH_TOKEN, own_stack, script_for, wait_until
from tests.integration.webhook_receiver import SECRET, SECRET_ENV, Receiver, agent_toml
from voxline.agents import BUNDLED_DIR
from voxline.devstack import DevStack
from voxline.simulator import Utterance, run_call

pytestmark = pytest.mark.integration

ORCHESTRATORS = ("orchestrator", "orchestrator-2")
QUESTIONS = ["first question", "second question"]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[DevStack]:
    agents = tmp_path_factory.mktemp("webhook-failover-agents")
    shutil.copy(BUNDLED_DIR / "demo.toml", agents / "demo.toml")
    (agents / "hooks-stall.toml").write_text(agent_toml("stall", f"http://127.0.0.1:{receiver.port}/stall"))
    env = {
        "VOXLINE_AGENTS_DIR": str(agents),
        SECRET_ENV: SECRET,
        "VOXLINE_WEBHOOK_BACKOFF_S": "0.05",
        "VOXLINE_WEBHOOK_BACKOFF_MAX_S": "0.2",
        "VOXLINE_WEBHOOK_TIMEOUT_S": "60",  # the held request stays open until its sender dies
    }
    with own_stack(tmp_path_factory, "webhooks-failover", env, replicas=2) as stack:
        yield stack


async def owner_of(stack: DevStack, call_id: str) -> str | None:
    async with httpx.AsyncClient() as client:
        for key in ORCHESTRATORS:
            proc = stack.processes[key]
            if not proc.alive:
                continue
            try:
                status = (await client.get(proc.health_url.replace("/readyz", "/status"), timeout=2)).json()
            except httpx.HTTPError:
                continue
            if call_id in status.get("calls", {}):
                return key
    return None


async def test_the_new_owner_resends_what_the_dead_one_had_begun_and_sends_the_rest(
    pair: DevStack, receiver: Receiver
) -> None:
    script = script_for(Utterance(text=QUESTIONS[0]), Utterance(text=QUESTIONS[1], pause_ms=6000))
    script.agent_id = "hooks-stall"
    call_id = str(script.call_sid)
    call = asyncio.create_task(run_call(pair.gateway_url, script, auth_token=AUTH_TOKEN))

    async def answered_while_held() -> bool:
        with receiver.lock:
            held = receiver.hanging == 1
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{pair.gateway_url}/v1/calls/{call_id}")
        replies = [t for t in response.json()["turns"] if t["kind"] == "reply"] if response.is_success else []
        return held and len(replies) == 1

    # Killed in the pause before the second question: the greeting and the first answer are
    # final in the record, and the owner's delivery of the caller's line is held open.
    await wait_until(answered_while_held, 20, "the first answer while the caller's line is held open")
    owner = await owner_of(pair, call_id)
    assert owner is not None
    other = next(k for k in ORCHESTRATORS if k != owner)
    proc = pair.processes[owner]
    assert proc.popen is not None
    proc.popen.send_signal(signal.SIGKILL)

    async def taken_over() -> bool:
        return await owner_of(pair, call_id) == other

    await wait_until(taken_over, 15, f"{other} to take the call over")
    result = await call
    assert result.accepted and not result.errors, result.errors
    assert result.record is not None and result.record["status"] == "ended"

    async def ended() -> bool:
        return any(r.event["type"] == "call.ended" for r in receiver.of_call(call_id, "/stall"))

    await wait_until(ended, 15, "call.ended from the new owner")
    got = receiver.of_call(call_id, "/stall")
    assert all(r.signed for r in got)
    types = [r.event["type"] for r in got]
    assert types[0] == "call.started" and types.count("call.started") == 1, "delivered once: not resent"
    lines_sent = [r.event for r in got if r.event["type"] == "transcript.final"]
    held = next(e for e in lines_sent if e["data"]["speaker"] == "caller")
    assert held["data"]["text"] == QUESTIONS[0]
    again = [r.event for r in got if r.event["id"] == held["id"]]
    assert len(again) == 2 and again[0] == again[1], "the held event, resent as it was"
    times = Counter(r.event["id"] for r in got)
    assert {i: n for i, n in times.items() if n > 1} == {held["id"]: 2}, times
    lines = [r.event["data"]["text"] for r in got if r.event["type"] == "transcript.final"]
    assert lines[0] == "Hello, webhooks here." and all(q in lines for q in QUESTIONS), lines
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{pair.gateway_url}/v1/calls/{call_id}/webhooks")
    deliveries = response.json()["deliveries"]
    assert [d["event_id"] for d in deliveries] == list(times)
    assert all(d["state"] == "delivered" for d in deliveries), deliveries
    await asyncio.get_running_loop().run_in_executor(None, pair.restart, owner)
