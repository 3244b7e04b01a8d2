"""Two orchestrators, one call: the owner dies (SIGKILL) or is stopped (SIGTERM past its
drain deadline) between two turns, and the other one goes on with the call from its saved
state. Real processes, a real nats-server and its JetStream KV; nothing is mocked.

How long a takeover took is printed (`-s`), never asserted: it is a benchmark's business.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import httpx
import msgspec
import nats
import pytest

from proto import decode, subjects
from proto.messages import BrainTurn, SpeechStarted
from proto.ownership import CALL_LEASES_BUCKET, CALL_STATE_BUCKET
from proto.records import CALL_RECORDS_BUCKET
from tests.integration.conftest import AUTH_TOKEN, own_stack, script_for, service_log, wait_until, watching
from voxline.devstack import DevStack
from voxline.simulator import CallScript, Utterance, run_call
from voxline.simulator.results import CallResult

pytestmark = pytest.mark.integration

ORCHESTRATORS = ("orchestrator", "orchestrator-2")
GATEWAYS = ("gateway", "gateway-2")
QUESTIONS = ["first question", "second question", "third question"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    # Two of every service (`voxline up --replicas 2`); a stopped orchestrator hands its
    # calls over after a 1 s drain instead of 15 minutes. The fake brain's post-call analysis
    # takes 2 s, as a model's would: time for an owner to die before it is written.
    env = {"VOXLINE_DRAIN_TIMEOUT_S": "1", "VOXLINE_FAKE_ANALYSIS_MS": "2000"}
    with own_stack(tmp_path_factory, "failover", env, replicas=2) as stack:
        yield stack


async def _owner(stack: DevStack, call_id: str) -> str | None:
    """Which orchestrator's /status lists the call (the operator's way to find it)."""
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


async def _replies(stack: DevStack, call_sid: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{stack.gateway_url}/v1/calls/{call_sid}")
    return [t for t in r.json()["turns"] if t["kind"] == "reply"] if r.status_code == 200 else []


async def _kv_keys(nats_url: str, bucket: str) -> list[str]:
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(bucket)
        try:
            return await kv.keys()
        except nats.js.errors.NoKeysError:
            return []
    finally:
        await nc.close()


async def _call_answered_once(stack: DevStack, script: CallScript) -> tuple[asyncio.Task[CallResult], str, str]:
    """Start the call and wait for its first reply; the call's task, its owner, the other."""
    call = await _answered_once(stack, script)
    owner = await _owner(stack, script.call_sid)
    assert owner in ORCHESTRATORS, "no orchestrator lists the call in /status"
    return call, owner, next(k for k in ORCHESTRATORS if k != owner)


async def _fail_owner_mid_call(stack: DevStack, how: signal.Signals) -> None:
    loop = asyncio.get_running_loop()
    script = script_for(
        Utterance(text=QUESTIONS[0]),
        Utterance(text=QUESTIONS[1], pause_ms=6000),  # the takeover happens in this silence
        Utterance(text=QUESTIONS[2]),
    )
    script.variables = {"customer_name": "Ada"}  # kept in the snapshot the new owner resumes from
    async with watching(stack.probe_url) as spy:
        call, owner, other = await _call_answered_once(stack, script)
        proc = stack.processes[owner]
        assert proc.popen is not None
        proc.popen.send_signal(how)
        failed_at = loop.time()

        async def taken_over() -> bool:
            return await _owner(stack, script.call_sid) == other

        await wait_until(taken_over, timeout=15, what=f"{other} to take the call over")
        print(f"\n{how.name} of the owner: {other} owned the call {loop.time() - failed_at:.2f} s later")
        assert len(await _replies(stack, script.call_sid)) == 1, "the takeover came after the second question"
        result = await call
        requests = spy.of_type(BrainTurn)

    assert result.accepted and not result.errors, result.errors
    assert [t.completed for t in result.turns] == [True, True, True]
    assert result.record is not None and result.record["status"] == "ended"
    replies = [t for t in result.record["turns"] if t["kind"] == "reply"]
    assert [str(r["reply_text"]).split(".")[0] for r in replies] == [f"You said: {q}" for q in QUESTIONS]
    # The history the new owner sends the brain holds what was said before the failover.
    second = next(r for r in requests if r.user_text == QUESTIONS[1])
    said = [h.content for h in second.history]
    assert QUESTIONS[0] in said and any(str(c).startswith(f"You said: {QUESTIONS[0]}") for c in said), said
    assert [r.variables.get("customer_name") for r in requests] == ["Ada"] * len(requests)  # old and new owner's
    assert result.record["variables"] == {"customer_name": "Ada"}

    # Everything of the call is released: nobody owns it, nothing of it is left in the KV
    # (the lease goes once the post-call analysis is written).
    async def released() -> bool:
        leases = await _kv_keys(stack.probe_url, CALL_LEASES_BUCKET)
        return await _owner(stack, script.call_sid) is None and script.call_sid not in leases

    await wait_until(released, timeout=10, what="the call to be released")
    assert script.call_sid not in await _kv_keys(stack.probe_url, CALL_LEASES_BUCKET)
    assert script.call_sid not in await _kv_keys(stack.probe_url, CALL_STATE_BUCKET)
    await loop.run_in_executor(None, stack.restart, owner)  # two orchestrators for the next test


async def test_the_owner_killed_between_turns_another_orchestrator_answers_the_next(pair: DevStack) -> None:
    await _fail_owner_mid_call(pair, signal.SIGKILL)


async def test_the_owner_stopped_hands_the_call_over(pair: DevStack) -> None:
    await _fail_owner_mid_call(pair, signal.SIGTERM)


async def test_an_owner_paused_and_resumed_lets_the_call_go_without_acting_on_it(pair: DevStack) -> None:
    stack = pair
    script = script_for(Utterance(text=QUESTIONS[0]), Utterance(text=QUESTIONS[1], pause_ms=6000))
    call, owner, other = await _call_answered_once(stack, script)
    proc = stack.processes[owner]
    assert proc.popen is not None
    proc.popen.send_signal(signal.SIGSTOP)  # alive, silent: its lease runs out
    try:

        async def taken_over() -> bool:
            return await _owner(stack, script.call_sid) == other

        await wait_until(taken_over, timeout=15, what=f"{other} to take the paused owner's call")
    finally:
        proc.popen.send_signal(signal.SIGCONT)  # back, with its timers and queue as they were

    async def let_go() -> bool:
        return "call let go: it is owned elsewhere" in service_log(stack, owner)

    await wait_until(let_go, timeout=15, what="the old owner to find its lease lost")
    result = await call
    assert result.accepted and not result.errors, result.errors
    assert [t.completed for t in result.turns] == [True, True]
    assert result.record is not None and result.record["status"] == "ended"
    replies = [t for t in result.record["turns"] if t["kind"] == "reply"]
    assert [str(r["reply_text"]).split(".")[0] for r in replies] == [f"You said: {q}" for q in QUESTIONS[:2]]


async def _holder(stack: DevStack, keys: tuple[str, ...], call_id: str) -> str | None:
    """Which of these instances' /status lists the call (a gateway's stream, an STT worker's audio)."""
    async with httpx.AsyncClient() as client:
        for key in keys:
            proc = stack.processes[key]
            if proc.alive:
                status = (await client.get(proc.health_url.replace("/readyz", "/status"), timeout=2)).json()
                if call_id in status.get("calls", []):
                    return key
    return None


async def _released_everywhere(stack: DevStack, call_id: str) -> bool:
    async with httpx.AsyncClient() as client:
        for key, proc in stack.processes.items():
            if key.startswith(("stt", "orchestrator", "gateway")) and proc.alive:
                status = (await client.get(proc.health_url.replace("/readyz", "/status"))).json()
                if call_id in status.get("calls", {}):
                    return False
    return True


async def _record_in_kv(stack: DevStack, call_id: str) -> dict[str, object] | None:
    nc = await nats.connect(stack.probe_url)
    try:
        entry = await (await nc.jetstream().key_value(CALL_RECORDS_BUCKET)).get(call_id)
        return msgspec.json.decode(entry.value) if entry.value else None
    except nats.js.errors.KeyNotFoundError:
        return None
    finally:
        await nc.close()


async def _answered_once(stack: DevStack, script: CallScript) -> asyncio.Task[CallResult]:
    """The call, running, once its first reply is in the record."""
    call = asyncio.create_task(run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN))

    async def first_reply() -> bool:
        return len(await _replies(stack, script.call_sid)) >= 1

    await wait_until(first_reply, timeout=30, what="the first reply")
    return call


async def test_a_dead_gateway_s_call_goes_on_through_another_gateway(pair: DevStack) -> None:
    """Twilio requests the `<Connect action>` when the stream drops; through the front door
    another gateway answers with a new stream of the same call, and the call goes on."""
    stack = pair
    script = script_for(Utterance(text=QUESTIONS[0]), Utterance(text=QUESTIONS[1], pause_ms=4000))
    call = await _answered_once(stack, script)
    holder = await _holder(stack, GATEWAYS, str(script.call_sid))
    assert holder in GATEWAYS, "no gateway lists the call in /status"
    stack.processes[holder].kill()  # SIGKILL: Twilio's media stream to it is gone
    result = await call
    assert [b.then for b in result.stream_breaks] == ["<Connect><Stream>"], result.stream_breaks
    print(f"\nSIGKILL of the call's gateway: a new stream {result.stream_breaks[0].gap_ms} ms later")
    assert not result.errors, result.errors
    assert [t.completed for t in result.turns] == [True, True]
    assert result.record is not None and result.record["status"] == "ended"
    assert result.record["stream_resumes"] == 1 and result.record["end_reason"] == "caller hung up"
    replies = [t for t in result.record["turns"] if t["kind"] == "reply"]
    assert [str(r["reply_text"]).split(".")[0] for r in replies] == [f"You said: {q}" for q in QUESTIONS[:2]]
    await wait_until(lambda: _released_everywhere(stack, script.call_sid), 10, "every service to release the call")
    await asyncio.get_running_loop().run_in_executor(None, stack.restart, holder)


async def test_with_no_gateway_left_the_call_ends_and_is_released_everywhere(pair: DevStack) -> None:
    stack = pair
    script = script_for(Utterance(text=QUESTIONS[0]), Utterance(text=QUESTIONS[1], pause_ms=20_000))
    call = await _answered_once(stack, script)
    for key in GATEWAYS:
        stack.processes[key].kill()
    result = await call
    assert not result.turns[-1].completed  # nobody could take the stream: no second answer
    [brk] = result.stream_breaks
    assert brk.resumed_at_ms is None and brk.then.startswith("<Error>"), brk  # the action was unreachable

    async def ended() -> bool:
        record = await _record_in_kv(stack, script.call_sid)
        return record is not None and record["status"] == "ended"

    await wait_until(ended, timeout=30, what="the owner to end the call after waiting for a new stream")
    record = await _record_in_kv(stack, script.call_sid)
    assert record is not None and record["end_reason"] == "media stream lost: gateway gone"
    await wait_until(lambda: _released_everywhere(stack, script.call_sid), 10, "every service to release the call")
    for key in GATEWAYS:
        await asyncio.get_running_loop().run_in_executor(None, stack.restart, key)


async def test_the_stt_worker_killed_mid_sentence_the_sentence_is_still_heard(pair: DevStack) -> None:
    """The worker dies while the caller is talking: its replacement first transcribes the
    caller audio the gateway kept since the last final, so the sentence is not lost."""
    stack = pair
    long_question = "could you tell me whether you are open on saturday mornings and where I can park"
    script = script_for(Utterance(text=QUESTIONS[0]), Utterance(text=long_question, pause_ms=1500))
    nc = await nats.connect(stack.probe_url)
    onsets: list[SpeechStarted] = []

    async def on_stt(msg: nats.aio.msg.Msg) -> None:
        event = decode(msg.data)
        if isinstance(event, SpeechStarted):
            onsets.append(event)

    await nc.subscribe(subjects.stt_events(str(script.call_sid)), cb=on_stt)
    try:
        call = asyncio.create_task(run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN))

        async def second_sentence_begun() -> bool:
            return len(onsets) >= 2

        await wait_until(second_sentence_begun, timeout=30, what="the caller to start the second sentence")
        holder = await _holder(stack, ("stt", "stt-2"), str(script.call_sid))
        assert holder is not None, "no STT worker lists the call"
        stack.processes[holder].kill()
        result = await call
    finally:
        await nc.close()
    assert not result.errors, result.errors
    assert [t.completed for t in result.turns] == [True, True]
    assert result.record is not None
    replies = [t for t in result.record["turns"] if t["kind"] == "reply"]
    assert [r["caller_text"] for r in replies] == [QUESTIONS[0], long_question]
    await asyncio.get_running_loop().run_in_executor(None, stack.restart, holder)


async def test_the_owner_killed_before_the_post_call_analysis_is_written_another_one_writes_it(
    pair: DevStack,
) -> None:
    stack, loop = pair, asyncio.get_running_loop()
    script = script_for(Utterance(text=QUESTIONS[0]))  # the demo agent asks for an analysis
    result = await run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN)
    assert result.accepted and not result.errors, result.errors
    analysing: list[str] = []

    async def owner_analysing() -> bool:
        async with httpx.AsyncClient() as client:
            for key in ORCHESTRATORS:
                status = (await client.get(stack.processes[key].health_url.replace("/readyz", "/status"))).json()
                if script.call_sid in status.get("analysing", []):
                    analysing.append(key)
        return bool(analysing)

    await wait_until(owner_analysing, timeout=10, what="the owner to analyse the ended call")
    [owner] = analysing
    record = await _record_in_kv(stack, script.call_sid)
    assert record is not None and record["status"] == "ended" and record["analysis"]["status"] == "pending"
    stack.processes[owner].kill()

    async def analysed() -> bool:
        record = await _record_in_kv(stack, script.call_sid)
        return record is not None and record["analysis"]["status"] != "pending"

    await wait_until(analysed, timeout=20, what="the other orchestrator to take the lease over and analyse")
    record = await _record_in_kv(stack, script.call_sid)
    assert record is not None and record["analysis"]["status"] == "done", record["analysis"]
    assert record["analysis"]["summary"] == f"Fake analysis (no model): the caller said: {QUESTIONS[0]}"
    other = next(key for key in ORCHESTRATORS if key != owner)
    assert "to analyse it" in service_log(stack, other)
    await wait_until(
        lambda: _lease_gone(stack, script.call_sid), timeout=10, what="the lease to go once the analysis is written"
    )
    await loop.run_in_executor(None, stack.restart, owner)  # two orchestrators for the next test


async def _lease_gone(stack: DevStack, call_id: str) -> bool:
    return call_id not in await _kv_keys(stack.probe_url, CALL_LEASES_BUCKET)
