"""A network partition, for real: the call's owning orchestrator runs in a network namespace
of its own, joined to the host by a veth pair, and that link is cut in the middle of a call.
The other orchestrator takes the call over from its lease and snapshot and answers the next
question; when the link comes back, the old owner finds its lease lost and lets the call go
without acting on it (no second answer, nothing stale heard).

Needs root for `ip netns` (CI runs as root here). The addresses are the namespace's own
(10.231.x.0/30 on the veth pair this test creates and deletes); nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import AUTH_TOKEN, own_stack, script_for, service_log, wait_until
from voxline.devstack import DevStack, Process, free_port, nats_server_binary
from voxline.nats_auth import NatsUsers
from voxline.simulator import Utterance, run_call

pytestmark = pytest.mark.integration

QUESTIONS = ["first question", "second question", "third question"]
HOST_IP, NS_IP = "10.231.7.1", "10.231.7.2"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Namespace:
    """A network namespace linked to the host by a veth pair: `cut()` and `heal()` the link."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name, self.host_if, self.ns_if = f"vx-{tag}", f"vxh{tag}", f"vxn{tag}"

    def create(self) -> None:
        ip("netns", "add", self.name)
        ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        ip("link", "set", self.ns_if, "netns", self.name)
        ip("addr", "add", f"{HOST_IP}/30", "dev", self.host_if)
        ip("link", "set", self.host_if, "up")
        ip("netns", "exec", self.name, "ip", "addr", "add", f"{NS_IP}/30", "dev", self.ns_if)
        ip("netns", "exec", self.name, "ip", "link", "set", self.ns_if, "up")
        ip("netns", "exec", self.name, "ip", "link", "set", "lo", "up")

    def cut(self) -> None:
        ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        ip("link", "set", self.host_if, "up")

    def delete(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def netns() -> Iterator[Namespace]:
    ns = Namespace()
    try:
        ns.create()
    except (OSError, subprocess.CalledProcessError) as exc:
        ns.delete()
        pytest.fail(f"cannot make a network namespace (root and iproute2 are needed): {exc}")
    yield ns
    ns.delete()


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory: pytest.TempPathFactory, netns: Namespace) -> Iterator[DevStack]:
    """Two of every service on one nats-server that listens on the host's veth address;
    `orchestrator-2` runs inside the namespace."""
    port = free_port()
    store = tmp_path_factory.mktemp("partition-nats")
    log = open(Path(store) / "nats.log", "ab")
    users = NatsUsers.generate()  # a user per service, as a dev stack's own server has
    conf = users.write_config(Path(store) / "users.conf")
    nats = subprocess.Popen(
        [nats_server_binary(), "-c", str(conf), "-a", HOST_IP, "-p", str(port), "-js", "-sd", str(store)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"nats://{HOST_IP}:{port}"
        env = {"VOXLINE_DRAIN_TIMEOUT_S": "1"}
        with own_stack(tmp_path_factory, "partition", env, 2, nats_url=url, nats_users=users) as stack:
            _move_into(stack, "orchestrator-2", netns)
            yield stack
    finally:
        nats.terminate()
        nats.wait(10)
        log.close()


def _move_into(stack: DevStack, key: str, ns: Namespace) -> None:
    """Restart one service inside the namespace, its probes on the namespace's address."""
    old = stack.processes[key]
    old.stop()
    health = free_port()
    env = {**old.env, "VOXLINE_HEALTH_HOST": NS_IP, "VOXLINE_HEALTH_PORT": str(health)}
    args = ["ip", "netns", "exec", ns.name, sys.executable, "-m", "services.orchestrator"]
    proc = Process(key, args, env, old.log, f"http://{NS_IP}:{health}/readyz")
    stack.processes[key] = proc
    proc.start()
    stack.wait_ready(key, 60)


async def _owner(stack: DevStack, call_id: str) -> str | None:
    async with httpx.AsyncClient() as client:
        for key in ("orchestrator", "orchestrator-2"):
            try:
                status = (
                    await client.get(stack.processes[key].health_url.replace("/readyz", "/status"), timeout=1)
                ).json()
            except httpx.HTTPError:
                continue
            if call_id in status.get("calls", {}):
                return key
    return None


async def test_the_owner_cut_off_is_replaced_and_lets_go_when_the_link_heals(
    partitioned: DevStack, netns: Namespace
) -> None:
    stack = partitioned
    loop = asyncio.get_running_loop()
    # The call must be owned inside the namespace: the host's orchestrator is away meanwhile.
    await loop.run_in_executor(None, stack.processes["orchestrator"].stop)
    script = script_for(
        Utterance(text=QUESTIONS[0]), Utterance(text=QUESTIONS[1], pause_ms=8000), Utterance(text=QUESTIONS[2])
    )
    call = asyncio.create_task(run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN))
    call_id = str(script.call_sid)

    async def owned_in_the_namespace() -> bool:
        return await _owner(stack, call_id) == "orchestrator-2"

    await wait_until(owned_in_the_namespace, 30, "the namespaced orchestrator to own the call")
    await loop.run_in_executor(None, lambda: stack.restart("orchestrator"))

    async def first_reply() -> bool:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{stack.gateway_url}/v1/calls/{call_id}")
        return r.status_code == 200 and any(t["kind"] == "reply" for t in r.json()["turns"])

    await wait_until(first_reply, 30, "the first reply")
    netns.cut()
    cut_at = loop.time()
    try:

        async def taken_over() -> bool:
            async with httpx.AsyncClient() as client:
                url = stack.processes["orchestrator"].health_url.replace("/readyz", "/status")
                return call_id in (await client.get(url, timeout=1)).json().get("calls", {})

        await wait_until(taken_over, 20, "the host's orchestrator to take the call over")
        print(f"\npartition: the call was taken over {loop.time() - cut_at:.2f} s after the cut")
    finally:
        netns.heal()

    async def let_go() -> bool:
        return "call let go: it is owned elsewhere" in service_log(stack, "orchestrator-2")

    await wait_until(let_go, 30, "the cut-off owner to find its lease lost once healed")
    result = await call
    assert not result.errors, result.errors
    assert [t.completed for t in result.turns] == [True, True, True]
    assert result.record is not None and result.record["status"] == "ended"
    replies = [t for t in result.record["turns"] if t["kind"] == "reply"]
    assert [r["caller_text"] for r in replies] == QUESTIONS  # one answer each: the old owner said nothing
    assert sum(b.cancelled_audio_heard_after_ms for b in result.barge_ins) == 0
