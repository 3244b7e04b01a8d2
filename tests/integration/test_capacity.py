"""Admission control end to end: an STT worker with room for one call takes the first; the
second finds no worker with room, and its caller hears the agent's busy message (Twilio's
`<Connect action>` after the refused stream) instead of silence or the failure apology."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import AUTH_TOKEN, own_stack, script_for, wait_until
from voxline.agents import AgentStore
from voxline.devstack import DevStack
from voxline.simulator import Utterance, run_call

pytestmark = pytest.mark.integration

BUSY = AgentStore().get("demo").busy_message


@pytest.fixture(scope="module")
def one_seat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    with own_stack(tmp_path_factory, "capacity", {"VOXLINE_STT_MAX_CALLS": "1"}) as stack:
        yield stack


async def test_a_call_beyond_capacity_hears_the_busy_message(one_seat: DevStack) -> None:
    stack = one_seat
    first = script_for(Utterance(text="first caller"), Utterance(text="still here", pause_ms=3000))
    holding = asyncio.create_task(run_call(stack.gateway_url, first, auth_token=AUTH_TOKEN))

    async def first_taken() -> bool:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{stack.gateway_url}/v1/calls/{first.call_sid}")
        return r.status_code == 200

    await wait_until(first_taken, 30, "the first call to be taken")
    second = await run_call(stack.gateway_url, script_for(Utterance(text="second caller")), auth_token=AUTH_TOKEN)
    assert not second.accepted and second.close_code == 1011
    [brk] = second.stream_breaks
    assert brk.then == f"<Say>{BUSY}</Say> <Hangup>", brk
    result = await holding  # the call that had the seat is not disturbed
    assert not result.errors and [t.completed for t in result.turns] == [True, True]
