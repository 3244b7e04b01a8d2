"""A worker dies mid-call: the call goes on and the next turn is answered."""

from __future__ import annotations

import asyncio

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
