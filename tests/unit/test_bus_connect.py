"""The bus reaches a NATS cluster through any of its nodes: a dead first URL is skipped."""

from __future__ import annotations

from tests.unit.bus_probe import NatsServer
from voxline.bus import MAX_OUTSTANDING_PINGS, PING_INTERVAL_S, Bus
from voxline.devstack import free_port


async def test_a_list_of_urls_connects_to_a_live_node(nats_server: NatsServer) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    bus = Bus("cluster-client")
    await bus.connect(f"{dead}, {nats_server.url}")
    try:
        assert bus.connected
        assert bus.nc.connected_url is not None and bus.nc.connected_url.port == int(nats_server.url.rsplit(":", 1)[1])
    finally:
        await bus.close()


def test_a_silent_partition_is_noticed_in_seconds() -> None:
    # nats-py's defaults (120 s x 2 pings) take minutes; a call cannot wait that long.
    assert PING_INTERVAL_S * (MAX_OUTSTANDING_PINGS + 1) <= 10
