"""`voxline calls` (list, get, events, place) run as a subprocess against a real stack of its
own: real nats-server and services, calls placed by the caller simulator through Twilio's
voice webhook and media stream, the gateway's Twilio SDK talking to the Twilio REST
emulator for `place`, and an API key required (the CLI takes it from VOXLINE_API_KEY)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from proto.records import CALL_RECORDS_BUCKET, CallRecord, TurnRecord
from tests.emulators.twilio_rest import ACCOUNT_SID, TwilioRestEmulator
from tests.integration.conftest import AUTH_TOKEN, own_stack, script_for, wait_until
from voxline.bus import Bus
from voxline.devstack import DevStack
from voxline.simulator import Utterance, run_call

pytestmark = pytest.mark.integration

API_KEY = "calls-cli-test-admin-key-0001"
QUESTION = "what are your opening hours"
OUR_NUMBER = "+15005550001"
BASE_US = 1_796_360_400_000_000  # 2026-12-04T05:00:00Z


@pytest.fixture(scope="module")
def twilio() -> Iterator[TwilioRestEmulator]:
    emulator = TwilioRestEmulator(auth_token=AUTH_TOKEN).start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, twilio: TwilioRestEmulator) -> Iterator[DevStack]:
    env = {"VOXLINE_API_KEY": API_KEY, "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "VOXLINE_TWILIO_API_BASE": twilio.base_url}
    with own_stack(tmp_path_factory, "calls-cli", env) as s:
        yield s


@pytest.fixture
async def bus(stack: DevStack) -> AsyncIterator[Bus]:
    b = Bus("test-calls-cli")
    await b.connect(stack.probe_url)
    yield b
    await b.close()


def cli_argv(stack: DevStack, *args: str) -> list[str]:
    return [sys.executable, "-m", "voxline.cli", "calls", "--url", stack.gateway_url, *args]


def cli_env(api_key: str = API_KEY) -> dict[str, str]:
    return {**os.environ, "VOXLINE_API_KEY": api_key}


async def voxline_calls(stack: DevStack, *args: str, api_key: str = API_KEY) -> subprocess.CompletedProcess[str]:
    """Run in a thread: the test's event loop stays free for a call going on meanwhile."""
    return await asyncio.to_thread(
        subprocess.run, cli_argv(stack, *args), capture_output=True, text=True, timeout=90, env=cli_env(api_key)
    )


def unique_number() -> str:
    return f"+1415{uuid.uuid4().int % 10_000_000:07d}"


async def test_list_get_and_live_events_of_a_simulated_call(stack: DevStack) -> None:
    caller = unique_number()
    script = script_for(Utterance(text=QUESTION), from_number=caller)
    call_sid = str(script.call_sid)
    call = asyncio.create_task(run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN))

    async with httpx.AsyncClient(base_url=stack.gateway_url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:

        async def started() -> bool:  # in-process: the CLI's start-up would eat into the greeting
            return (await http.get(f"/v1/calls/{call_sid}")).status_code == 200

        await wait_until(started, 15.0, "the call's record")
    # Follow the call while it goes on: the partial transcript is sent live only (the record
    # never holds it), so seeing it proves the CLI printed events as they came.
    events = await asyncio.create_subprocess_exec(
        *cli_argv(stack, "events", call_sid),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    result = await call
    assert result.accepted and not result.errors, result.errors
    out, err = await asyncio.wait_for(events.communicate(), 60)
    assert events.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    kinds = [line.split()[1] for line in lines]
    assert kinds[-1] == "call.ended" and kinds.count("call.ended") == 1, lines
    assert "transcript.partial" in kinds, lines
    assert any(line.endswith(f"caller: {QUESTION}") for line in lines), lines
    # The simulator reads the record without a key (refused here): the CLI's --json has it.
    as_json = await voxline_calls(stack, "get", call_sid, "--json")
    assert as_json.returncode == 0, as_json.stderr
    record = json.loads(as_json.stdout)
    assert record["status"] == "ended" and record["call_id"] == call_sid
    reply = next(t for t in record["turns"] if t.get("caller_text") == QUESTION)
    assert any(line.endswith(f"agent: {reply['reply_text']}") for line in lines), lines
    assert any("turn.ended" in line and "llm_first_token" in line for line in lines), lines

    listed = await voxline_calls(stack, "list", "--number", caller)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:2] == ["CALL", "ID"]
    assert len(rows) == 1 and rows[0].split()[:1] == [call_sid], listed.stdout
    assert "inbound" in rows[0] and "ended" in rows[0] and caller in rows[0]

    got = await voxline_calls(stack, "get", call_sid)
    assert got.returncode == 0, got.stderr
    text = got.stdout
    assert f"from {caller}" in text and "status    ended" in text
    assert f"  caller: {QUESTION}" in text
    assert f"  agent:  {reply['reply_text']}" in text
    # The cost drivers: each sentence goes to TTS on its own, without the space that joins
    # the reply's sentences in reply_text (the fake brain's reply is two: one ". " join).
    costs = record["costs"]
    expected = sum(
        len(t["reply_text"]) - (t["reply_text"].count(". ") if t["kind"] == "reply" else 0) for t in record["turns"]
    )
    assert costs["tts_characters"] == expected > 0, (costs, record["turns"])
    assert costs["caller_audio_s"] == costs["stt_audio_s"] > 1.0
    assert costs["agent_audio_s"] > 1.0
    assert costs["llm_replies"] == costs["llm_replies_without_usage"] >= 1  # the fake brain reports no usage
    assert costs["llm_prompt_tokens"] == costs["llm_completion_tokens"] == 0
    assert f"tts_characters {expected}" in text
    first_stage = next(iter(reply["latency"]))
    assert f"  latency: {first_stage} " in text and text.count("  latency: ") >= 2  # greeting and reply


async def test_list_filters_and_pages_through_every_call_once(stack: DevStack, bus: Bus) -> None:
    agent = f"cli-{uuid.uuid4().hex[:10]}"
    ids = []
    for i in range(5):
        call_id = f"CA{uuid.uuid4().hex}"
        record = CallRecord(
            call_id=call_id,
            call_sid=call_id,
            agent_id=agent,
            status="ended",
            started_at_us=BASE_US + i * 1_000_000,
            ended_at_us=BASE_US + i * 1_000_000 + 65_000_000,
            direction="outbound" if i % 2 else "inbound",
            turns=[TurnRecord(turn_id=1, kind="greeting", reply_text="Hello.", latency={"tts_first_audio": 40.0})],
        )
        await bus.kv_put(CALL_RECORDS_BUCKET, call_id, record)
        ids.append(call_id)
    newest_first = ids[::-1]

    one_page = await voxline_calls(stack, "list", "--agent", agent, "--limit", "2")
    assert one_page.returncode == 0, one_page.stderr
    assert [r.split()[0] for r in one_page.stdout.splitlines()[1:]] == newest_first[:2]
    assert "more: --cursor " in one_page.stderr
    cursor = one_page.stderr.split("--cursor ")[1].split()[0]
    second = await voxline_calls(stack, "list", "--agent", agent, "--limit", "2", "--cursor", cursor)
    assert [r.split()[0] for r in second.stdout.splitlines()[1:]] == newest_first[2:4]

    every = await voxline_calls(stack, "list", "--agent", agent, "--limit", "2", "--all")
    assert every.returncode == 0, every.stderr
    rows = every.stdout.splitlines()[1:]
    assert [r.split()[0] for r in rows] == newest_first and "more:" not in every.stderr
    assert "2026-12-04 05:00:04" in rows[0] and "1:05" in rows[0]

    outbound = await voxline_calls(stack, "list", "--agent", agent, "--direction", "outbound", "--all")
    assert [r.split()[0] for r in outbound.stdout.splitlines()[1:]] == [ids[3], ids[1]]
    window = await voxline_calls(
        stack, "list", "--agent", agent, "--since", "2026-12-04T05:00:01Z", "--until", str((BASE_US + 3e6) / 1e6)
    )
    assert [r.split()[0] for r in window.stdout.splitlines()[1:]] == [ids[2], ids[1]]


async def test_errors_print_the_apis_message_and_exit_non_zero(stack: DevStack) -> None:
    missing = f"CA{uuid.uuid4().hex}"
    for command in ("get", "events"):
        gone = await voxline_calls(stack, command, missing)
        assert gone.returncode == 1 and f"404 no call {missing}" in gone.stderr, gone.stderr
    bad_time = await voxline_calls(stack, "list", "--since", "yesterday")
    assert bad_time.returncode == 1 and "422" in bad_time.stderr and "(field started_after)" in bad_time.stderr
    bad_key = await voxline_calls(stack, "list", api_key="not-a-key")
    assert bad_key.returncode == 1 and "401" in bad_key.stderr and "not-a-key" not in bad_key.stderr
    unreachable = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "voxline.cli", "calls", "--url", "http://127.0.0.1:9", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
    )
    assert unreachable.returncode == 1 and "ConnectError" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr + bad_time.stderr


async def test_place_dials_through_twilio_and_refuses_a_message_without_detection(
    stack: DevStack, twilio: TwilioRestEmulator
) -> None:
    to = f"+15005552{uuid.uuid4().int % 1000:03d}"  # in the demo agent's outbound allowlist
    placed = await voxline_calls(
        stack,
        "place",
        "--to",
        to,
        "--agent",
        "demo",
        "--from",
        OUR_NUMBER,
        "--machine-detection",
        "--voicemail-message",
        "Please call us back.",
        "--var",
        "customer_name=Ada",
        "--var",
        "appointment=Tuesday 3pm=ish",
    )
    assert placed.returncode == 0, placed.stderr
    sid = placed.stdout.split()[0]
    assert sid.startswith("CA")
    [made] = [r for r in twilio.created() if r.call_sid == sid]
    assert made.form["To"] == to and made.form["From"] == OUR_NUMBER
    assert made.form["MachineDetection"] == "DetectMessageEnd"
    voice_url = made.form["Url"]  # the variables ride in the voice URL Twilio will sign
    assert parse_qs(urlsplit(voice_url).query)["vars"] == ['{"customer_name":"Ada","appointment":"Tuesday 3pm=ish"}'], (
        voice_url
    )

    refused = await voxline_calls(stack, "place", "--to", to, "--voicemail-message", "Hi.", "--from", OUR_NUMBER)
    assert refused.returncode == 1 and "422" in refused.stderr and "(field voicemail_message)" in refused.stderr
    unknown = await voxline_calls(stack, "place", "--to", to, "--agent", "nobody-here", "--from", OUR_NUMBER)
    assert unknown.returncode == 1 and "404" in unknown.stderr, unknown.stderr
    assert len([r for r in twilio.created() if r.form.get("To") == to]) == 1  # neither refusal dialled
