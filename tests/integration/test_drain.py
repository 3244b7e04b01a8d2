"""A rolling update: every service gets SIGTERM in turn while a call is live, and the caller
notices nothing.

Kubernetes starts the new pod before it terminates the old one (maxSurge), so the stateless
brain and TTS get a second instance first; the sticky STT worker, the orchestrator and the
gateway keep the call they hold until it ends, unready meanwhile, and exit by themselves
afterwards. Real processes, real signals, a real nats-server; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import nats.js.errors
import pytest

from proto.records import CALL_RECORDS_BUCKET
from tests.integration.conftest import AUTH_TOKEN, own_stack, script_for, wait_until
from voxline.devstack import DevStack, Process
from voxline.simulator import Utterance, run_call

pytestmark = pytest.mark.integration

# Long enough for a second brain and TTS to start and five signals to be sent on a busy
# 2-core machine; the test checks that they all happened inside it.
PAUSE_BEFORE_SECOND_QUESTION_MS = 25_000
HOLDERS = ("stt", "orchestrator", "gateway")  # keep the live call while they drain


@pytest.fixture(scope="module")
def drain_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    # The call, not the deadline, must end the drain.
    with own_stack(tmp_path_factory, "drain", {"VOXLINE_DRAIN_TIMEOUT_S": "120"}) as stack:
        yield stack


async def _readiness(proc: Process) -> int:
    async with httpx.AsyncClient() as client:
        return (await client.get(proc.health_url, timeout=2)).status_code


async def _replies(stack: DevStack, call_sid: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{stack.gateway_url}/v1/calls/{call_sid}")
    return [t for t in r.json()["turns"] if t["kind"] == "reply"] if r.status_code == 200 else []


async def _record(nats_url: str, call_id: str) -> dict[str, Any]:
    nc = await nats.connect(nats_url)
    try:
        entry = await (await nc.jetstream().key_value(CALL_RECORDS_BUCKET)).get(call_id)
        return dict(json.loads(entry.value or b"{}"))
    except nats.js.errors.KeyNotFoundError:
        return {}
    finally:
        await nc.close()


async def _exited(proc: Process) -> bool:
    return not proc.alive


async def test_a_call_survives_sigterm_of_every_service_in_turn(drain_stack: DevStack) -> None:
    stack = drain_stack
    loop = asyncio.get_running_loop()
    script = script_for(
        Utterance(text="first question"),
        Utterance(text="second question", pause_ms=PAUSE_BEFORE_SECOND_QUESTION_MS),
        Utterance(text="third question"),
        agent_id="patient",  # the silence before the second question is longer than the demo's idle hang-up
    )
    call = asyncio.create_task(run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN))

    async def first_reply() -> bool:
        return len(await _replies(stack, script.call_sid)) >= 1

    await wait_until(first_reply, timeout=30, what="the first reply")
    for service in ("brain", "tts"):  # the new pods of a rolling update come up first
        await loop.run_in_executor(None, stack.add_instance, service)

    for name in ("brain", "tts", *HOLDERS):
        proc = stack.processes[name]
        assert proc.popen is not None
        proc.popen.send_signal(signal.SIGTERM)
        if name in HOLDERS:

            async def unready(proc: Process = proc) -> bool:
                return await _readiness(proc) == 503

            await wait_until(unready, timeout=20, what=f"{name} to turn unready on SIGTERM")
            assert proc.alive, f"{name} exited while it still held the call"
        else:  # nothing in flight between two turns: it leaves at once, cleanly
            await wait_until(lambda proc=proc: _exited(proc), timeout=20, what=f"{name} to exit")  # type: ignore[misc]
            assert proc.popen.returncode == 0

    # Every signal was sent while the caller was still silent before the second question.
    assert len(await _replies(stack, script.call_sid)) == 1, "the machine was too slow for the scripted pause"
    async with httpx.AsyncClient() as client:
        refused = await client.post(f"{stack.gateway_url}/twilio/voice", data={"CallSid": "CAnew"})
    assert refused.status_code == 503  # a new call goes to another gateway (Twilio retries or falls back)

    result = await call
    assert result.accepted and not result.errors, result.errors
    assert [t.completed for t in result.turns] == [True, True, True]
    # The draining gateway leaves as soon as its call is over, so the record is read from
    # the KV store itself.
    record: dict[str, Any] = {}

    async def recorded() -> bool:
        record.update(await _record(stack.probe_url, script.call_sid))
        return record.get("status") == "ended"

    await wait_until(recorded, timeout=15, what="the call's final record")
    replies = [t for t in record["turns"] if t["kind"] == "reply"]
    questions = ["first question", "second question", "third question"]
    assert len(replies) == 3, replies
    for reply, question in zip(replies, questions, strict=True):
        assert str(reply["reply_text"]).startswith(f"You said: {question}"), reply
    assert "shutting down" not in str(record.get("end_reason", ""))

    # Once their call is over, the draining processes leave on their own, cleanly.
    for name in HOLDERS:
        proc = stack.processes[name]
        await wait_until(lambda proc=proc: _exited(proc), timeout=30, what=f"{name} to exit after the call")  # type: ignore[misc]
        assert proc.popen is not None and proc.popen.returncode == 0, name
