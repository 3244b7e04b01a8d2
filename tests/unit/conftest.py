"""A real nats-server for the unit tests that run one worker in-process: the worker gets a
real `Bus` on it, and the test talks to the worker over the same server through a `Probe`.
The monitoring port lets a test ask the server which subjects a connection subscribes to."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.unit.bus_probe import NatsServer, Probe
from voxline.bus import Bus
from voxline.devstack import Process, free_port, nats_server_binary, wait_for_port


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    port, monitor = free_port(), free_port()
    store = tmp_path_factory.mktemp("nats")
    log_path = store / "nats-server.log"
    args = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor), "-js", "-sd", str(store)]
    with open(log_path, "ab") as log:
        server = Process("nats", args, dict(os.environ), log)
        server.start()
        try:
            wait_for_port(server, port, log_path=log_path)
            yield NatsServer(f"nats://127.0.0.1:{port}", f"http://127.0.0.1:{monitor}")
        finally:
            server.kill()


@pytest.fixture
async def worker_bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    """The bus the worker under test is connected to."""
    bus = Bus("worker-under-test")
    await bus.connect(nats_server.url)
    yield bus
    await bus.close()


@pytest.fixture
async def probe(nats_server: NatsServer) -> AsyncIterator[Probe]:
    """The test's own connection: drives the worker and records what it publishes."""
    p = await Probe.connect(nats_server.url)
    yield p
    await p.close()
