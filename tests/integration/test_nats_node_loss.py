"""A 3-node NATS cluster on loopback, two of every service connected to all three URLs, and
the KV buckets kept on three nodes (`VOXLINE_KV_REPLICAS=3`): one node is SIGKILLed in the
middle of a call and the call goes on, its record intact, nothing left behind after it.

Real nats-server processes with JetStream clustering (routes between them); the node killed
is the one most of the services are connected to, so clients really have to move.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import AUTH_TOKEN, own_stack, script_for, wait_until
from voxline.devstack import DevStack, free_port, nats_server_binary
from voxline.nats_auth import NatsUsers
from voxline.simulator import Utterance, run_call

pytestmark = pytest.mark.integration

QUESTIONS = ["first question", "second question", "third question"]


@dataclass
class Node:
    name: str
    client_port: int
    monitor_port: int
    popen: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    def get(self, path: str) -> dict[str, object]:
        result: dict[str, object] = httpx.get(f"http://127.0.0.1:{self.monitor_port}{path}", timeout=2).json()
        return result


def start_cluster(root: Path, users: NatsUsers, size: int = 3) -> list[Node]:
    """`size` nats-servers with JetStream, routed to each other, each with `users` (a user
    per service, as a dev stack's own server); returns once JetStream has a meta leader
    (the cluster can create replicated buckets)."""
    conf = users.write_config(root / "users.conf")
    cluster_ports = [free_port() for _ in range(size)]
    routes = ",".join(f"nats://127.0.0.1:{p}" for p in cluster_ports)
    nodes = []
    for i, cport in enumerate(cluster_ports):
        name = f"n{i + 1}"
        client, monitor = free_port(), free_port()
        store = root / name
        store.mkdir(parents=True, exist_ok=True)
        args = [
            *(nats_server_binary(), "-c", str(conf)),
            *("-a", "127.0.0.1", "-p", str(client), "-m", str(monitor), "-js", "-sd", str(store)),
            *("--server_name", name, "--cluster_name", "voxline", "--cluster", f"nats://127.0.0.1:{cport}"),
            *("--routes", routes),
        ]
        log = open(root / f"{name}.log", "ab")
        nodes.append(Node(name, client, monitor, subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            meta = nodes[0].get("/jsz").get("meta_cluster")
            if isinstance(meta, dict) and meta.get("leader") and len(meta.get("replicas") or []) == size - 1:
                return nodes
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    stop_cluster(nodes)
    raise RuntimeError("the NATS cluster elected no JetStream meta leader within 30 s")


def stop_cluster(nodes: list[Node]) -> None:
    for node in nodes:
        if node.popen.poll() is None:
            node.popen.terminate()
            node.popen.wait(10)


@pytest.fixture(scope="module")
def users() -> NatsUsers:
    return NatsUsers.generate()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, users: NatsUsers) -> Iterator[list[Node]]:
    nodes = start_cluster(tmp_path_factory.mktemp("nats-cluster"), users)
    yield nodes
    stop_cluster(nodes)


@pytest.fixture(scope="module")
def clustered(tmp_path_factory: pytest.TempPathFactory, cluster: list[Node], users: NatsUsers) -> Iterator[DevStack]:
    env = {"VOXLINE_NATS_URL": ",".join(n.url for n in cluster), "VOXLINE_KV_REPLICAS": "3"}
    url = env["VOXLINE_NATS_URL"]
    with own_stack(tmp_path_factory, "cluster", env, replicas=2, nats_url=url, nats_users=users) as stack:
        yield stack


def busiest(nodes: list[Node]) -> Node:
    """The node holding the most client connections (our services' and nothing else)."""
    return max(nodes, key=lambda n: int(str(n.get("/varz").get("connections", 0))))


async def test_a_nats_node_killed_mid_call_the_call_goes_on(cluster: list[Node], clustered: DevStack) -> None:
    stack = clustered
    script = script_for(
        Utterance(text=QUESTIONS[0]), Utterance(text=QUESTIONS[1], pause_ms=4000), Utterance(text=QUESTIONS[2])
    )
    call = asyncio.create_task(run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN))

    async def first_reply() -> bool:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{stack.gateway_url}/v1/calls/{script.call_sid}")
        return r.status_code == 200 and any(t["kind"] == "reply" for t in r.json()["turns"])

    await wait_until(first_reply, timeout=30, what="the first reply")
    victim = busiest(cluster)
    moved = int(str(victim.get("/varz").get("connections", 0)))
    assert moved > 0, "no service was connected to the node: killing it would prove nothing"
    victim.popen.kill()
    result = await call
    print(f"\nkilled {victim.name} with {moved} client connections mid-call")
    assert not result.errors, result.errors
    assert [t.completed for t in result.turns] == [True, True, True]
    assert result.record is not None and result.record["status"] == "ended"
    replies = [t for t in result.record["turns"] if t["kind"] == "reply"]
    assert [r["caller_text"] for r in replies] == QUESTIONS

    async def released() -> bool:
        async with httpx.AsyncClient() as client:
            for key, proc in stack.processes.items():
                if proc.alive and proc.health_url and key != "front_door":
                    status = (await client.get(proc.health_url.replace("/readyz", "/status"))).json()
                    if script.call_sid in status.get("calls", {}):
                        return False
        return True

    await wait_until(released, timeout=15, what="every service to release the call")
