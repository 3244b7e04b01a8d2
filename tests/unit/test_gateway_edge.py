"""The gateway's edge rules, unit by unit: single-use stream tokens and the call's one
stream (on a real nats-server, through the real KV), the limits on unauthenticated sockets
and on a stream's message rate, and the refusal to run exposed without secrets."""

from __future__ import annotations

import asyncio

import pytest

from services.gateway.edge_limits import MessageBudget, PendingStreams
from services.gateway.stream_claims import StreamClaims, StreamOutdated
from services.gateway.stream_token import InvalidStreamToken, StreamTokens
from voxline.bus import Bus
from voxline.config import GatewaySettings, is_loopback


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_takes_a_burst_then_the_rate() -> None:
    clock = Clock()
    budget = MessageBudget(rate_per_s=10, burst=10, clock=clock)
    assert all(budget.take() for _ in range(10))
    assert not budget.take()
    clock.now += 0.5  # 5 messages' worth
    assert sum(budget.take() for _ in range(10)) == 5
    clock.now += 60.0  # a long quiet spell refills only up to the burst
    assert sum(budget.take() for _ in range(50)) == 10


def test_twilio_paced_traffic_never_runs_out() -> None:
    """100 messages a second (media and mark echoes) for ten minutes, against the defaults."""
    clock = Clock()
    settings = GatewaySettings()
    budget = MessageBudget(settings.ws_messages_per_s, settings.ws_messages_burst, clock=clock)
    for _ in range(60_000):
        clock.now += 0.01
        assert budget.take()


def test_pending_sockets_are_limited_per_source_and_in_all() -> None:
    pending = PendingStreams(per_source=2, total=3)
    a1, a2 = pending.admit("10.0.0.1"), pending.admit("10.0.0.1")
    assert a1 is not None and a2 is not None
    assert pending.admit("10.0.0.1") is None  # the source's share is used up
    b1 = pending.admit("10.0.0.2")
    assert b1 is not None
    assert pending.admit("10.0.0.3") is None  # and the total
    a1.release()
    a1.release()  # a slot is given back once, however often it is released
    assert pending.count == 2
    assert pending.admit("10.0.0.3") is not None
    assert pending.admit("10.0.0.1") is None


def test_an_exposed_gateway_names_every_missing_secret() -> None:
    exposed = GatewaySettings(http_host="0.0.0.0")
    problems = exposed.exposure_problems()
    assert len(problems) == 3
    for name in ("TWILIO_AUTH_TOKEN", "VOXLINE_API_KEY", "VOXLINE_STREAM_TOKEN_SECRET"):
        assert any(name in p for p in problems), name
    assert exposed.exposure_problems(stored_api_keys=1) == [p for p in problems if "API key" not in p]
    assert GatewaySettings(http_host="0.0.0.0", insecure_dev=True).exposure_problems() == []
    assert GatewaySettings(http_host="127.0.0.1").exposure_problems() == []
    safe = GatewaySettings(http_host="0.0.0.0", TWILIO_AUTH_TOKEN="t", api_key="k", stream_token_secret="s" * 32)
    assert safe.exposure_problems() == []


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "localhost", "::1"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "", "gateway"])
def test_hosts_beyond_loopback(host: str) -> None:
    assert not is_loopback(host)


async def test_a_stream_token_opens_one_stream_on_any_gateway(worker_bus: Bus) -> None:
    one, other = StreamTokens("s" * 32, 60, worker_bus), StreamTokens("s" * 32, 60, worker_bus)
    token = one.issue("CA1", "demo", "AC1")
    await one.verify(token, "CA1", "demo", "AC1")
    with pytest.raises(InvalidStreamToken, match="already used"):
        await other.verify(token, "CA1", "demo", "AC1")  # replayed to another gateway
    with pytest.raises(InvalidStreamToken, match="already used"):
        await one.verify(token, "CA1", "demo", "AC1")
    await other.verify(one.issue("CA1", "demo", "AC1"), "CA1", "demo", "AC1")  # a new token is fine


async def test_two_gateways_racing_with_one_token_let_exactly_one_through(worker_bus: Bus) -> None:
    gateways = [StreamTokens("s" * 32, 60, worker_bus) for _ in range(5)]
    token = gateways[0].issue("CA2", "demo")
    results = await asyncio.gather(*(g.verify(token, "CA2", "demo") for g in gateways), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1


async def test_the_newest_token_holds_the_call(worker_bus: Bus) -> None:
    a, b = StreamClaims(worker_bus, "gw-a"), StreamClaims(worker_bus, "gw-b")
    assert await a.claim("CA3", "MZ1", issued_us=1_000) == ""
    assert await a.claim("CA3", "MZ1", issued_us=1_000) == ""  # the same stream again: no change
    assert await b.claim("CA3", "MZ2", issued_us=2_000) == "MZ1"  # newer: takes it, names the old one
    with pytest.raises(StreamOutdated):
        await a.claim("CA3", "MZ3", issued_us=1_500)  # older than the holder
    with pytest.raises(StreamOutdated):
        await a.claim("CA3", "MZ4", issued_us=2_000)  # a tie does not move it either
    assert await a.claim("CA4", "MZ9", issued_us=1) == ""  # another call is its own


async def test_streams_racing_for_a_call_end_with_the_newest(worker_bus: Bus) -> None:
    claims = [StreamClaims(worker_bus, f"gw-{n}") for n in range(6)]
    results = await asyncio.gather(
        *(c.claim("CA5", f"MZ{n}", issued_us=n) for n, c in enumerate(claims)), return_exceptions=True
    )
    assert not isinstance(results[5], BaseException)  # the newest always wins its claim
    with pytest.raises(StreamOutdated):
        await claims[0].claim("CA5", "MZ-late", issued_us=4)
