"""The attacks on the Twilio edge named in the Secure issue, each against a real stack over
real sockets: a replayed stream token, a second stream for a live call (an older and a newer
token), an unsigned WebSocket upgrade, an oversize message before `start`, a socket that
never starts, unauthenticated sockets piling up from one address, a message flood, and the
internal endpoints on the public port; and a gateway bound beyond loopback without its
secrets, started as a process. Every refusal is checked where Twilio or an operator
would see it: the close code or HTTP status, and voxline_gateway_refused_streams_total on the
gateway's internal port; where a victim call is on the line, it must go on."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.deploy.k8s import ROOT
from tests.integration.conftest import AUTH_TOKEN, own_stack, script_for, wait_until
from voxline.devstack import DevStack, free_port
from voxline.simulator import CallScript, Utterance
from voxline.simulator.caller import prepare_audio
from voxline.simulator.line import PhoneLine
from voxline.simulator.placement import place_call, stream_parameters, upgrade_headers
from voxline.simulator.twilio_stream import StreamTarget, TwilioStream, encode

pytestmark = pytest.mark.integration

QUESTION = Utterance(text="what are your opening hours")
ATTACKER = "127.0.0.2"  # another address on the loopback: the attacker is not Twilio
PENDING_PER_SOURCE = 4


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    env = {
        "VOXLINE_STREAM_START_TIMEOUT_S": "3",
        "VOXLINE_WS_PENDING_PER_SOURCE": str(PENDING_PER_SOURCE),
        # Above a live call's rate (50 media frames a second and the mark echoes), far below a flood.
        "VOXLINE_WS_MESSAGES_PER_S": "150",
        "VOXLINE_WS_MESSAGES_BURST": "300",
    }
    with own_stack(tmp_path_factory, "edge", env) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client


class Caller:
    """A real caller's side: Twilio's webhook, then the media stream it signs and opens."""

    def __init__(self, stack: DevStack, http: httpx.AsyncClient, script: CallScript) -> None:
        self.stack, self.http, self.script = stack, http, script
        self.sid = script.call_sid or ""
        self.line: PhoneLine | None = None

    async def webhook(self) -> StreamTarget:
        """Twilio asks the voice webhook again for the same call (a `<Connect action>`
        hand-over does): a new, newer stream token."""
        return await place_call(self.http, self.stack.gateway_url, self.script, AUTH_TOKEN)

    async def connect(self, target: StreamTarget) -> PhoneLine:
        ws = await websockets.connect(
            target.url, compression=None, additional_headers=upgrade_headers(target.url, AUTH_TOKEN)
        )
        line = PhoneLine(ws, TwilioStream(self.sid, self.script.account_sid or ""))
        await line.start(stream_parameters(target.parameters, self.script))
        return line

    async def call(self) -> PhoneLine:
        self.line = await self.connect(await self.webhook())
        assert await self.line.wait_reply_started(0.0, 15), "the greeting never came"
        return self.line

    async def status(self) -> str:
        response = await self.http.get(f"{self.stack.gateway_url}/v1/calls/{self.sid}")
        return str(response.json()["status"]) if response.status_code == 200 else ""

    async def answered(self, line: PhoneLine) -> bool:
        """The call goes on: a question asked now gets a reply on this line."""
        since = line.clock()
        spoken = line.speak(prepare_audio(QUESTION))
        assert await line.wait_spoken(spoken, 15)
        return await line.wait_reply_started(since, 15) is not None and not line.closed


def victim(stack: DevStack, http: httpx.AsyncClient) -> Caller:
    return Caller(stack, http, script_for(QUESTION, QUESTION))


async def open_socket(url: str, headers: dict[str, str], source: str = "127.0.0.1") -> ClientConnection:
    return await websockets.connect(
        url, compression=None, additional_headers=headers, max_size=None, local_addr=(source, 0)
    )


async def closed_by_gateway(ws: ClientConnection, timeout: float = 10.0) -> tuple[int | None, list[str]]:
    """Read until the gateway closes the socket: its close code and the events it sent."""
    events: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            async for raw in ws:
                events.append(json.loads(raw)["event"])
    except ConnectionClosed:
        pass
    return ws.close_code, events


async def present(caller: Caller, target: StreamTarget) -> tuple[int | None, list[str]]:
    """A second, signed socket for the caller's call that starts with `target`'s token: how the
    gateway ends it."""
    ws = await open_socket(target.url, upgrade_headers(target.url, AUTH_TOKEN))
    stream = TwilioStream(caller.sid, caller.script.account_sid or "")
    await ws.send(encode(stream.connected()))
    await ws.send(encode(stream.start(stream_parameters(target.parameters, caller.script))))
    return await closed_by_gateway(ws)


def refused(stack: DevStack, reason: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{stack.health_port('gateway')}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "voxline_gateway_refused_streams_total" and sample.labels.get("reason") == reason:
                return sample.value
    return 0.0


async def test_a_replayed_stream_token_is_refused_and_the_call_goes_on(
    stack: DevStack, http: httpx.AsyncClient
) -> None:
    caller = victim(stack, http)
    target = await caller.webhook()
    line = await caller.connect(target)
    assert await line.wait_reply_started(0.0, 15)
    before = refused(stack, "invalid token")

    # The attacker saw the TwiML (or the start message) and replays the token on its own socket.
    code, events = await present(caller, target)

    assert code == 1008 and "media" not in events, (code, events)  # nothing of the call reaches it
    assert refused(stack, "invalid token") == before + 1
    assert await caller.status() == "in-progress"
    assert await caller.answered(line), "the victim's call must go on"
    await line.hang_up()


async def test_an_older_token_is_refused_and_a_newer_one_takes_the_call_over(
    stack: DevStack, http: httpx.AsyncClient
) -> None:
    caller = victim(stack, http)
    older = await caller.webhook()
    newer = await caller.webhook()
    line = await caller.connect(newer)
    assert await line.wait_reply_started(0.0, 15)

    before = refused(stack, "outdated")
    code, events = await present(caller, older)
    assert code == 1008 and "media" not in events, (code, events)
    assert refused(stack, "outdated") == before + 1
    assert not line.closed

    # Twilio's hand-over: a fresh webhook, a newer token; that stream holds the call now.
    newest = await caller.webhook()
    superseded = refused(stack, "superseded")
    taken_over = await caller.connect(newest)
    await wait_until(_closed(line), 10, "the gateway to close the older stream")
    assert line.closed_by_gateway and refused(stack, "superseded") == superseded + 1
    assert await caller.status() == "in-progress"
    assert await caller.answered(taken_over)
    await taken_over.hang_up()


def _closed(line: PhoneLine) -> Any:
    async def check() -> bool:
        return line.closed

    return check


async def test_an_unsigned_or_wrongly_signed_upgrade_is_refused_before_anything_is_read(
    stack: DevStack, http: httpx.AsyncClient
) -> None:
    target = await victim(stack, http).webhook()
    before = refused(stack, "bad signature")
    for headers in ({}, upgrade_headers(target.url, "not-the-accounts-auth-token")):
        with pytest.raises(InvalidStatus) as refusal:
            await open_socket(target.url, headers)
        assert refusal.value.response.status_code == 403
    assert refused(stack, "bad signature") == before + 2


async def test_an_oversize_message_closes_the_socket_and_a_live_call_goes_on(
    stack: DevStack, http: httpx.AsyncClient
) -> None:
    caller = victim(stack, http)
    line = await caller.call()
    target = await victim(stack, http).webhook()
    ws = await open_socket(target.url, upgrade_headers(target.url, AUTH_TOKEN), source=ATTACKER)
    await ws.send("x" * 64 * 1024)  # a Twilio media message is under 1 KiB; the limit is 8 KiB
    code, events = await closed_by_gateway(ws)
    assert code == 1009 and events == [], (code, events)
    assert await caller.answered(line)
    await line.hang_up()


async def test_a_socket_that_never_sends_start_is_closed(stack: DevStack, http: httpx.AsyncClient) -> None:
    target = await victim(stack, http).webhook()
    before = refused(stack, "no start")
    ws = await open_socket(target.url, upgrade_headers(target.url, AUTH_TOKEN), source=ATTACKER)
    code, events = await closed_by_gateway(ws)  # the stack's start timeout is 3 s
    assert code == 1008 and events == []
    assert refused(stack, "no start") == before + 1


async def test_unauthenticated_sockets_are_capped_per_address_and_twilios_calls_are_not(
    stack: DevStack, http: httpx.AsyncClient
) -> None:
    target = await victim(stack, http).webhook()
    signed = upgrade_headers(target.url, AUTH_TOKEN)
    before = refused(stack, "too many pending")
    held = [await open_socket(target.url, signed, source=ATTACKER) for _ in range(PENDING_PER_SOURCE)]
    with pytest.raises(InvalidStatus) as refusal:
        await open_socket(target.url, signed, source=ATTACKER)
    assert refusal.value.response.status_code == 403
    assert refused(stack, "too many pending") == before + 1

    # Meanwhile Twilio, from its own address, holds more streams than the cap: an authenticated
    # stream no longer counts as pending (each is pending only until its `start`, milliseconds).
    lines = [await victim(stack, http).call() for _ in range(PENDING_PER_SOURCE + 2)]
    assert all(not line.closed for line in lines)
    for ws in held:
        await ws.close()
    await asyncio.gather(*(line.hang_up() for line in lines))


async def test_a_stream_flooding_messages_is_closed_and_a_normal_call_is_not(
    stack: DevStack, http: httpx.AsyncClient
) -> None:
    caller = victim(stack, http)
    line = await caller.call()
    flooder = victim(stack, http)
    target = await flooder.webhook()
    ws = await open_socket(target.url, upgrade_headers(target.url, AUTH_TOKEN))
    stream = TwilioStream(flooder.sid, flooder.script.account_sid or "")
    before = refused(stack, "message rate")
    await ws.send(encode(stream.connected()))
    await ws.send(encode(stream.start(stream_parameters(target.parameters, flooder.script))))
    try:
        for n in range(3000):  # 160 ms of audio a millisecond: far beyond 150 a second, burst 300
            await ws.send(encode(stream.media(b"\xff" * 160, n * 20)))
    except ConnectionClosed:
        pass  # closed under the flood, as it should be
    code, _ = await closed_by_gateway(ws)
    assert code == 1008
    assert refused(stack, "message rate") == before + 1
    assert await caller.answered(line), "a call at the same limits goes on"
    await line.hang_up()


async def test_status_and_metrics_answer_only_on_the_internal_port(stack: DevStack, http: httpx.AsyncClient) -> None:
    internal = f"http://127.0.0.1:{stack.health_port('gateway')}"
    for path in ("/status", "/metrics"):
        assert (await http.get(f"{stack.gateway_url}{path}")).status_code == 404, path
        assert (await http.get(f"{internal}{path}")).status_code == 200, path
    for path in ("/healthz", "/readyz"):  # what a load balancer in front needs stays public
        assert (await http.get(f"{stack.gateway_url}{path}")).status_code == 200, path


def gateway_process(env: dict[str, str]) -> subprocess.Popen[str]:
    """`python -m services.gateway` as an operator starts it, with only `env` (none of the
    test stack's secrets): its own stdout and stderr, one pipe."""
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "VOXLINE_LOG_FORMAT": "text"}
    return subprocess.Popen(
        [sys.executable, "-m", "services.gateway"],
        cwd=ROOT,
        env={**base, "VOXLINE_HTTP_PORT": str(free_port()), "VOXLINE_HEALTH_PORT": str(free_port()), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_gateway_exposed_without_its_secrets_refuses_to_start_naming_each() -> None:
    planted = "sk-planted-stream-secret-0123456789"
    gateway = gateway_process(
        {
            "VOXLINE_HTTP_HOST": "0.0.0.0",
            "VOXLINE_NATS_URL": "nats://127.0.0.1:9",
            "VOXLINE_STREAM_TOKEN_SECRET": planted,
        }
    )
    output, _ = gateway.communicate(timeout=60)
    assert gateway.returncode == 78, output
    assert "TWILIO_AUTH_TOKEN" in output and "VOXLINE_API_KEY" in output, output
    assert "VOXLINE_STREAM_TOKEN_SECRET" not in output, "it is set: only what is missing is named"
    assert planted not in output


def test_insecure_dev_is_the_explicit_way_out_and_sigterm_stops_it_while_the_bus_is_away() -> None:
    gateway = gateway_process(
        {"VOXLINE_HTTP_HOST": "0.0.0.0", "VOXLINE_NATS_URL": "nats://127.0.0.1:9", "VOXLINE_INSECURE_DEV": "1"}
    )
    try:
        assert gateway.stdout is not None
        seen = []
        for line in gateway.stdout:  # it goes on to the bus (here unreachable) instead of exiting
            seen.append(line)
            if "nats error" in line or "not reachable" in line:
                break
        assert gateway.poll() is None, "".join(seen)
        assert not any("refusing to start" in line for line in seen), "".join(seen)
        gateway.terminate()  # before the fix it went on retrying the bus: SIGTERM did nothing
        gateway.wait(timeout=30)
        assert gateway.returncode == 0
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
