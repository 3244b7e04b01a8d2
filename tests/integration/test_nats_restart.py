"""The bus itself goes away for 3 s mid-call (nats-server killed and started again on the
same port and JetStream store): every service reconnects, the call goes on, and nobody
takes the bus's silence for a dead worker or a dead owner.

Two orchestrators, so a wrongly taken-over lease would show; what each orchestrator did is
read from its own log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.integration.conftest import AUTH_TOKEN, own_stack, script_for, service_log, wait_until
from tests.integration.test_failover import _replies
from voxline.devstack import DevStack
from voxline.simulator import Utterance, run_call

pytestmark = pytest.mark.integration

BUS_DOWN_S = 3.0


@pytest.fixture(scope="module")
def stack_to_cut(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    with own_stack(tmp_path_factory, "nats-restart", {}) as stack:
        stack.add_instance("orchestrator")
        yield stack


async def test_a_three_second_bus_outage_moves_nothing_and_the_call_goes_on(stack_to_cut: DevStack) -> None:
    stack = stack_to_cut
    questions = ["first question", "second question"]
    # The second question comes well after the bus is back (and after any ping grace).
    script = script_for(Utterance(text=questions[0]), Utterance(text=questions[1], pause_ms=12_000))
    call = asyncio.create_task(run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN))

    async def first_reply() -> bool:
        return len(await _replies(stack, script.call_sid)) >= 1

    await wait_until(first_reply, timeout=30, what="the first reply")
    nats = stack.processes["nats"]
    nats.kill()
    await asyncio.sleep(BUS_DOWN_S)  # the outage itself: a length of time is what is tested
    nats.start()
    result = await call

    assert result.accepted and not result.errors, result.errors
    assert [t.completed for t in result.turns] == [True, True]
    assert result.record is not None
    replies = [t for t in result.record["turns"] if t["kind"] == "reply"]
    assert [str(r["reply_text"]).split(".")[0] for r in replies] == [f"You said: {q}" for q in questions]
    logs = service_log(stack, "orchestrator") + service_log(stack, "orchestrator-2")
    assert "is gone; moving" not in logs  # no STT worker was taken for dead
    assert "took the call over" not in logs  # and no live owner lost its call
