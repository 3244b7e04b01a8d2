"""A worker dies mid-call: the call goes on and the next turn is answered."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.integration.conftest import AUTH_TOKEN, service_log, wait_until
from voxline.devstack import DevStack
from voxline.simulator import CallScript, Utterance, run_call

pytestmark = pytest.mark.integration


async def test_brain_killed_mid_call_apologises_and_answers_the_next_turn(stack: DevStack) -> None:
    brain = stack.processes["brain"]
    brain.kill()  # SIGKILL: no goodbye, the request in flight is simply lost
    texts = ["first question", "second question"]
    script = CallScript(
        utterances=[Utterance(text=t) for t in texts], extra_parameters={"fake_transcripts": "|".join(texts)}
    )
    call = asyncio.create_task(run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN))
    try:

        async def watchdog_fired() -> bool:
            return "brain timed out" in service_log(stack, "orchestrator")

        await wait_until(watchdog_fired, timeout=30, what="the orchestrator's brain watchdog")
        await asyncio.get_running_loop().run_in_executor(None, stack.restart, "brain")
        result = await call
    finally:
        if not brain.alive:
            stack.restart("brain")
    assert result.accepted and not result.errors, result.errors
    assert [t.completed for t in result.turns] == [True, True]
    assert result.record is not None
    replies = [t for t in result.record["turns"] if t["kind"] in ("reply", "apology")]
    assert replies[0]["kind"] == "apology" and "say that again" in replies[0]["reply_text"]
    assert replies[1]["kind"] == "reply" and replies[1]["reply_text"].startswith("You said: second question")


async def test_stt_worker_killed_mid_call_the_next_turn_is_answered(stack: DevStack) -> None:
    texts = ["first question", "second question"]
    script = CallScript(
        # The second question comes late enough for the dead worker to be noticed (two
        # missed 1 s pings) and replaced.
        utterances=[Utterance(text=texts[0]), Utterance(text=texts[1], pause_ms=6000)],
        extra_parameters={"fake_transcripts": "|".join(texts)},
    )
    call = asyncio.create_task(run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN))
    try:

        async def first_reply_heard() -> bool:
            async with httpx.AsyncClient() as client:
                r = await client.get(f"{stack.gateway_url}/v1/calls/{script.call_sid}")
            return r.status_code == 200 and any(t["kind"] == "reply" for t in r.json()["turns"])

        await wait_until(first_reply_heard, timeout=30, what="the first reply")
        stack.processes["stt"].kill()
        await asyncio.get_running_loop().run_in_executor(None, stack.restart, "stt")
        result = await call
    finally:
        if not stack.processes["stt"].alive:
            stack.restart("stt")
    assert result.accepted and not result.errors, result.errors
    assert [t.completed for t in result.turns] == [True, True]
    assert "moving its 1 calls" in service_log(stack, "orchestrator")
    assert result.record is not None
    replies = [t for t in result.record["turns"] if t["kind"] == "reply"]
    # The new worker goes on with the call's next line (SttAssign.finals_heard).
    assert [r["caller_text"] for r in replies] == texts and all(r["heard_text"] for r in replies)
