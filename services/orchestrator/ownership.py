"""One owner per call, and another one when it dies: the lease protocol of
`proto/ownership.py`, carried out over the bus.

The owner renews each lease it holds every `renew_s` by compare-and-set on the revision it
last wrote; a renewal that loses means someone took the call over (we were paused or cut
off), so the call is let go at once and this process never acts on it again. Every
orchestrator watches the leases bucket; `LeaseBook` decides, from what it saw and not from
anyone's clock, which leases stood still for the whole lease time while we were connected:
those are orphans, and the first orchestrator whose compare-and-set lands owns the call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from proto.ownership import CALL_LEASES_BUCKET, CALL_STATE_BUCKET, CallLease
from voxline.bus import Bus, RevisionMismatch
from voxline.telemetry import now_us

log = logging.getLogger("voxline.orchestrator.ownership")

# How long the state and a lease may outlive a call that was never cleaned up (a crash at
# the very end): the buckets' own TTL.
STATE_TTL_S = 24 * 3600.0


@dataclass(frozen=True)
class LeaseTimes:
    """A lease is orphaned after `ttl_s` without a renewal; the owner renews every
    `renew_s` (several renewals fit in one lease time, so one slow write costs nothing);
    orphans are looked for every `check_s`. Takeover comes `ttl_s` to `ttl_s + check_s`
    after the owner's last renewal."""

    ttl_s: float = 1.5
    renew_s: float = 0.4
    check_s: float = 0.2


@dataclass
class _Seen:
    revision: int
    owner: str
    since: float  # our monotonic clock when this revision was first seen
    epoch: int = 1


class LeaseBook:
    """The leases as this orchestrator has seen them move. Pure: fed by the watch, asked
    with a monotonic time; unit-tested without a bus."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._seen: dict[str, _Seen] = {}

    def saw(self, call_id: str, revision: int, owner: str, now: float, epoch: int = 1) -> None:
        seen = self._seen.get(call_id)
        if seen is None or seen.revision != revision:
            self._seen[call_id] = _Seen(revision, owner, now, epoch)

    def epoch(self, call_id: str) -> int:
        seen = self._seen.get(call_id)
        return 0 if seen is None else seen.epoch

    def gone(self, call_id: str) -> None:
        self._seen.pop(call_id, None)

    def restart_clock(self, now: float) -> None:
        """The bus was down: a lease that did not move meanwhile may have been renewed
        unseen, so every lease gets a whole lease time again from now."""
        for seen in self._seen.values():
            seen.since = now

    def revision(self, call_id: str) -> int | None:
        seen = self._seen.get(call_id)
        return None if seen is None else seen.revision

    def owner(self, call_id: str) -> str | None:
        seen = self._seen.get(call_id)
        return None if seen is None else seen.owner

    def orphans(self, now: float, mine: set[str]) -> list[tuple[str, int]]:
        """(call id, revision) of leases that are not ours and either were handed over
        (no owner) or stood still for a whole lease time."""
        return [
            (call_id, seen.revision)
            for call_id, seen in self._seen.items()
            if call_id not in mine and (not seen.owner or now - seen.since >= self.ttl_s)
        ]


class Ownership:
    """The leases this orchestrator holds, their renewal, and the search for orphans.

    `on_lost(call_id)` is called when a renewal finds the lease taken: the caller must stop
    acting on the call. `on_orphan(call_id, revision)` is called for a lease that can be
    taken over; it decides (it may be draining) and calls `take_over`.
    """

    def __init__(
        self,
        bus: Bus,
        instance_id: str,
        times: LeaseTimes,
        on_lost: Callable[[str], Awaitable[None]],
        on_orphan: Callable[[str, int], Awaitable[None]],
    ) -> None:
        self.bus = bus
        self.instance_id = instance_id
        self.times = times
        self.book = LeaseBook(times.ttl_s)
        self._on_lost = on_lost
        self._on_orphan = on_orphan
        self._held: dict[str, int] = {}  # call id -> the revision of our last write
        self._epochs: dict[str, int] = {}  # call id -> our ownership epoch (orders carry it)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for bucket in (CALL_LEASES_BUCKET, CALL_STATE_BUCKET):
            await self.bus.create_bucket(bucket, ttl_s=STATE_TTL_S)
        self._tasks = [
            asyncio.create_task(self._watch(), name="lease-watch"),
            asyncio.create_task(self._renew(), name="lease-renew"),
            asyncio.create_task(self._look_for_orphans(), name="lease-orphans"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def holds(self, call_id: str) -> bool:
        return call_id in self._held

    def _lease(self, call_id: str, owner: str) -> CallLease:
        return CallLease(owner=owner, renewed_at_us=now_us(), epoch=self._epochs.get(call_id, 1))

    def epoch(self, call_id: str) -> int:
        """Our ownership epoch of a call we hold (0 if we do not)."""
        return self._epochs.get(call_id, 0) if call_id in self._held else 0

    async def acquire(self, call_id: str) -> bool:
        """Own a new call; False if someone already does."""
        self._epochs[call_id] = 1
        try:
            self._held[call_id] = await self.bus.kv_create(
                CALL_LEASES_BUCKET, call_id, self._lease(call_id, self.instance_id)
            )
        except RevisionMismatch:
            self._epochs.pop(call_id, None)
            return False
        return True

    async def take_over(self, call_id: str, revision: int) -> bool:
        """Own an orphaned call, if no one else got there first: one epoch past the last."""
        self._epochs[call_id] = self.book.epoch(call_id) + 1
        try:
            self._held[call_id] = await self.bus.kv_update(
                CALL_LEASES_BUCKET, call_id, self._lease(call_id, self.instance_id), revision
            )
        except RevisionMismatch:
            self._epochs.pop(call_id, None)
            return False
        return True

    def revision(self, call_id: str) -> int | None:
        """The revision of our last write of the call's lease, if we hold it."""
        return self._held.get(call_id)

    async def hand_over(self, call_id: str, revision: int) -> bool:
        """Give the call up on purpose: a lease with no owner is taken at once. `revision`
        is our last write, read before the call's actor stopped (stopping forgets it)."""
        self._held.pop(call_id, None)
        try:
            await self.bus.kv_update(CALL_LEASES_BUCKET, call_id, self._lease(call_id, ""), revision)
        except RevisionMismatch:
            return False
        return True

    async def release(self, call_id: str) -> None:
        """The call ended: its lease and state go."""
        self._held.pop(call_id, None)
        self._epochs.pop(call_id, None)
        for bucket in (CALL_LEASES_BUCKET, CALL_STATE_BUCKET):
            try:
                await self.bus.kv_delete(bucket, call_id)
            except Exception as exc:  # the bucket TTL collects what a failure leaves
                log.warning("could not delete %s of the ended call: %s", bucket, exc, extra={"call_id": call_id})

    def forget(self, call_id: str) -> None:
        """Stop renewing without touching the bucket (the lease is someone else's now)."""
        self._held.pop(call_id, None)
        self._epochs.pop(call_id, None)

    async def save_state(self, call_id: str, state: bytes) -> None:
        await self.bus.kv_put_bytes(CALL_STATE_BUCKET, call_id, state)

    async def load_state(self, call_id: str) -> bytes | None:
        return await self.bus.kv_get_bytes(CALL_STATE_BUCKET, call_id)

    # --- background -----------------------------------------------------------------------

    async def _watch(self) -> None:
        """Keep `book` up to date with every lease's revision; restart a broken watch."""
        while True:
            try:
                async for change in self.bus.kv_watch(CALL_LEASES_BUCKET):
                    if change.value is None:
                        self.book.gone(change.key)
                        continue
                    try:
                        lease = msgspec.json.decode(change.value, type=CallLease)
                    except msgspec.ValidationError as exc:
                        log.error("ignored a malformed lease %s: %s", change.key, exc)
                        continue
                    self.book.saw(change.key, change.revision, lease.owner, time.monotonic(), lease.epoch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lease watch failed (%s); watching again", exc)
            await asyncio.sleep(self.times.check_s)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.times.renew_s)
            for call_id, revision in list(self._held.items()):
                try:
                    self._held[call_id] = await self.bus.kv_update(
                        CALL_LEASES_BUCKET, call_id, self._lease(call_id, self.instance_id), revision
                    )
                except RevisionMismatch:
                    if self._held.pop(call_id, None) is not None:
                        self._epochs.pop(call_id, None)
                        log.error("lease lost: another orchestrator owns the call now", extra={"call_id": call_id})
                        await self._on_lost(call_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the bus is down: nobody can take it over either
                    log.warning("lease renewal failed: %s", exc, extra={"call_id": call_id})

    async def _look_for_orphans(self) -> None:
        epoch = self.bus.connection_epoch
        while True:
            await asyncio.sleep(self.times.check_s)
            if not self.bus.connected:
                continue  # no takeover while the bus itself is down
            if self.bus.connection_epoch != epoch:
                epoch = self.bus.connection_epoch
                self.book.restart_clock(time.monotonic())
                continue
            for call_id, revision in self.book.orphans(time.monotonic(), set(self._held)):
                try:
                    await self._on_orphan(call_id, revision)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # The lease store did not answer (a NATS node holding its stream died and
                    # a new leader is being elected): the owner could not renew meanwhile
                    # either, so, as after a bus outage, every lease gets a whole lease time
                    # from now instead of being taken from a live owner the moment it answers.
                    log.exception("taking over an orphaned call failed", extra={"call_id": call_id})
                    self.book.restart_clock(time.monotonic())
                    break
