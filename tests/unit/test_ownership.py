"""Call ownership: the pure bookkeeping of who may take a lease over, and the lease protocol
itself against a real nats-server's JetStream KV (two orchestrators' `Ownership`s)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.orchestrator.ownership import LeaseBook, LeaseTimes, Ownership
from tests.unit.bus_probe import NatsServer
from voxline.bus import Bus

TTL = 1.5


def test_a_lease_is_an_orphan_only_after_standing_still_a_whole_lease_time() -> None:
    book = LeaseBook(TTL)
    book.saw("CA1", revision=1, owner="a", now=10.0)
    assert book.orphans(11.4, mine=set()) == []
    book.saw("CA1", revision=2, owner="a", now=11.0)  # renewed: the clock starts again
    assert book.orphans(12.4, mine=set()) == []
    assert book.orphans(12.5, mine=set()) == [("CA1", 2)]
    assert book.orphans(12.5, mine={"CA1"}) == []  # never our own


def test_a_handed_over_lease_is_taken_at_once_and_a_deleted_one_is_forgotten() -> None:
    book = LeaseBook(TTL)
    book.saw("CA1", revision=7, owner="", now=10.0, epoch=2)
    assert book.orphans(10.0, mine=set()) == [("CA1", 7)] and book.epoch("CA1") == 2
    book.gone("CA1")
    assert book.orphans(99.0, mine=set()) == [] and book.owner("CA1") is None


def test_after_a_bus_outage_every_lease_gets_a_whole_lease_time_again() -> None:
    book = LeaseBook(TTL)
    book.saw("CA1", revision=1, owner="a", now=10.0)
    book.restart_clock(now=20.0)  # we were cut off: it may have been renewed unseen
    assert book.orphans(21.0, mine=set()) == []
    assert book.orphans(21.5, mine=set()) == [("CA1", 1)]


class _Orchestrator:
    """One orchestrator's side of ownership: what it lost and which orphans it was shown."""

    def __init__(self, bus: Bus, name: str) -> None:
        self.lost: list[str] = []
        self.told = asyncio.Event()
        self.orphans: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

        async def on_lost(call_id: str) -> None:
            self.lost.append(call_id)
            self.told.set()

        async def on_orphan(call_id: str, revision: int) -> None:
            self.orphans.put_nowait((call_id, revision))

        self.ownership = Ownership(bus, name, LeaseTimes(ttl_s=0.6, renew_s=0.15, check_s=0.05), on_lost, on_orphan)


@pytest.fixture
async def two(nats_server: NatsServer) -> AsyncIterator[tuple[_Orchestrator, _Orchestrator]]:
    buses = [Bus(f"orchestrator-{n}") for n in (1, 2)]
    for bus in buses:
        await bus.connect(nats_server.url)
    pair = (_Orchestrator(buses[0], "a"), _Orchestrator(buses[1], "b"))
    for o in pair:
        await o.ownership.start()
    yield pair
    for o in pair:
        await o.ownership.stop()
    for bus in buses:
        await bus.close()


async def test_one_owner_a_takeover_with_a_new_epoch_and_the_old_owner_told(
    two: tuple[_Orchestrator, _Orchestrator],
) -> None:
    a, b = two
    assert await a.ownership.acquire("CAx1")
    assert not await b.ownership.acquire("CAx1")  # exactly one owner
    assert a.ownership.epoch("CAx1") == 1 and b.ownership.epoch("CAx1") == 0
    # a stops renewing (as if paused): b is shown the orphan and takes it over.
    a.ownership.forget("CAx1")
    call_id, revision = await asyncio.wait_for(b.orphans.get(), timeout=10)
    assert call_id == "CAx1"
    assert await b.ownership.take_over("CAx1", revision)
    assert b.ownership.epoch("CAx1") == 2
    assert not await a.ownership.take_over("CAx1", revision)  # the same revision cannot win twice
    await b.ownership.release("CAx1")


async def test_a_paused_owner_s_renewal_loses_and_it_is_told(two: tuple[_Orchestrator, _Orchestrator]) -> None:
    a, b = two
    assert await a.ownership.acquire("CAx2")
    revision = a.ownership.revision("CAx2")
    assert revision is not None
    # b takes over the revision a wrote last, while a's renewals are still scheduled.
    assert await b.ownership.take_over("CAx2", revision)
    await asyncio.wait_for(a.told.wait(), timeout=10)  # a's next renewal finds the lease moved
    assert a.lost == ["CAx2"] and not a.ownership.holds("CAx2")
    await b.ownership.release("CAx2")
