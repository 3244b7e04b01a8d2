"""The agents as they are in JetStream KV (`proto.records.AGENTS_BUCKET`), the one source of
truth: every service keeps a copy in memory, kept current by a watch on the bucket, so
`AgentStore.get` stays synchronous and answers without a round trip on every turn.

An agent's version is its entry's revision: it grows on every write. A call runs the
version it started with (the orchestrator keeps the agent in the call and writes the
version into the record and every `BrainTurn`); the bucket keeps `AGENT_HISTORY` versions
of each agent, so a service that never saw an older version can still read it back.

An empty bucket is seeded from the TOML directory (the bundled demo agent on `make run`),
each agent only if its key never existed (expected last revision 0): replicas starting
together do not overwrite each other, and an agent deleted through the API stays deleted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, NamedTuple

import msgspec
from nats.errors import NoRespondersError
from nats.js.errors import (
    APIError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
)
from nats.js.kv import KeyValue

from proto.records import AGENTS_BUCKET

if TYPE_CHECKING:
    from collections.abc import Callable

    from voxline.agents import Agent, AgentStore
    from voxline.bus import Bus

log = logging.getLogger("voxline.agents")

AGENT_HISTORY = 16  # versions kept per agent in the bucket (the most NATS allows is 64)
OLDER_KEPT = 256  # older versions kept in memory, for calls still running them
WRITE_ATTEMPTS = 5  # a read-modify-write that keeps losing the compare-and-set gives up
WATCH_RETRY_S = 0.5
SEED_ATTEMPTS, SEED_RETRY_S = 60, 0.25  # up to 15 s for a new bucket's stream to answer


class Versioned(NamedTuple):
    agent: Agent
    version: int


class AgentExists(Exception):
    pass


class WriteConflict(Exception):
    """Others kept changing the agent while this update tried to apply."""


class VersionMismatch(Exception):
    """The agent is not at the version the writer said it changes (`If-Match`): someone
    else wrote it since the writer read it. `current` is the version it is at now."""

    def __init__(self, agent_id: str, current: int) -> None:
        super().__init__(f"agent {agent_id!r} is at version {current}, not the one If-Match names")
        self.current = current


WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream's error codes for a failed compare-and-set


class LiveAgents:
    def __init__(self, bus: Bus, store: AgentStore) -> None:
        self.bus = bus
        self.store = store
        self.current: dict[str, Versioned] = {}
        self.invalid: dict[str, str] = {}  # id -> why its stored value is not an agent
        self._revisions: dict[str, int] = {}  # last revision applied per key (puts and deletes)
        self._older: OrderedDict[tuple[str, int], Agent] = OrderedDict()
        self._kv: KeyValue | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open (or create) the bucket, seed it, and return once the watch has delivered
        every agent: from here on `get` answers from memory."""
        await self.bus.create_bucket(AGENTS_BUCKET, ttl_s=0, history=AGENT_HISTORY)
        self._kv = await self.bus.nc.jetstream().key_value(AGENTS_BUCKET)
        await self._seed()
        self._task = asyncio.create_task(self._watch(), name="agents-watch")
        await self._ready.wait()
        log.info("agents from %s: %s", AGENTS_BUCKET, ", ".join(sorted(self.current)) or "none")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("the agent store was not started")
        return self._kv

    async def _seed(self) -> None:
        for agent in self.store.file_agents():
            for attempt in range(1, SEED_ATTEMPTS + 1):
                try:
                    await self.kv.update(agent.id, encode(agent), last=0)  # 0: the key never existed
                    log.info("agent %s seeded from %s", agent.id, self.store.directory)
                except KeyWrongLastSequenceError:
                    pass  # there (or deleted through the API): the bucket wins
                except (NoStreamResponseError, NoRespondersError, TimeoutError):
                    # A bucket another replica has just created in a NATS cluster answers once
                    # its stream has elected a leader (test_nats_node_loss: "no response from
                    # stream" while the first replica's create settled).
                    if attempt == SEED_ATTEMPTS:
                        raise
                    await asyncio.sleep(SEED_RETRY_S)
                    continue
                break

    async def _watch(self) -> None:
        """Apply every change as it happens; a broken watch is started again, which
        replays the latest entry of every key (deletions included)."""
        while True:
            try:
                watcher = await self.kv.watchall()
                try:
                    async for entry in watcher:
                        if entry is None:  # every entry that existed when the watch began
                            self._ready.set()
                            continue
                        deleted = entry.operation is not None
                        self.apply(entry.key, None if deleted else entry.value, entry.revision or 0)
                finally:
                    await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closing():
                    log.info("agents watch ends: the bus connection is closing")
                    return
                log.warning("agents watch failed (%s); watching again", type(exc).__name__)
            await asyncio.sleep(WATCH_RETRY_S)

    def _closing(self) -> bool:
        """The process is shutting down its bus: a watch started again would only fail, and
        its retries kept a stopping brain alive past its grace period (test_drain)."""
        nc = self.bus.nc
        return nc.is_closed or nc.is_draining

    def apply(self, key: str, value: bytes | None, revision: int) -> None:
        """One entry, from the watch or from this service's own write (whichever comes
        second is ignored by its revision)."""
        if revision <= self._revisions.get(key, 0):
            return
        self._revisions[key] = revision
        previous = self.current.pop(key, None)
        if previous is not None:
            self._remember(key, previous)
        self.invalid.pop(key, None)
        if value is None:
            return
        try:
            agent = self.store.parse(msgspec.json.decode(value), key)
        except Exception as exc:  # written by something else than the API: refused per call
            self.invalid[key] = str(exc)
            log.error("agent %s in %s is invalid: %s", key, AGENTS_BUCKET, exc)
            return
        self.current[key] = Versioned(agent, revision)

    def _remember(self, key: str, versioned: Versioned) -> None:
        self._older[(key, versioned.version)] = versioned.agent
        while len(self._older) > OLDER_KEPT:
            self._older.popitem(last=False)

    def versioned(self, agent_id: str) -> Versioned | None:
        return self.current.get(agent_id)

    def at(self, agent_id: str, version: int) -> Agent | None:
        """The agent at `version` if it is in memory (the current one or one seen before)."""
        now = self.current.get(agent_id)
        if now is not None and now.version == version:
            return now.agent
        return self._older.get((agent_id, version))

    async def fetch(self, agent_id: str, version: int) -> Agent | None:
        """The agent at `version`, read back from the bucket's history when this service
        never saw it (started after the edit); None when the bucket no longer has it."""
        known = self.at(agent_id, version)
        if known is not None:
            return known
        try:
            entry = await self.kv.get(agent_id, revision=version)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        if entry.value is None:
            return None
        agent = self.store.parse(msgspec.json.decode(entry.value), agent_id)
        self._remember(agent_id, Versioned(agent, version))
        return agent

    # --- writes (the gateway's /v1/agents) ----------------------------------------------

    async def create(self, agent: Agent) -> Versioned:
        data = encode(agent)
        try:
            revision = await self.kv.create(agent.id, data)  # also over a deleted one
        except KeyWrongLastSequenceError:
            raise AgentExists(f"agent {agent.id!r} exists") from None
        self.apply(agent.id, data, revision)
        return Versioned(agent, revision)

    async def update(
        self, agent_id: str, change: Callable[[Agent], Agent], expected: Callable[[int], bool] | None = None
    ) -> Versioned:
        """Read, change and write back by compare-and-set on the revision read, so two
        concurrent updates (PATCH of different fields) both land. With `expected` (the
        request's If-Match) the revision read must satisfy it and a lost compare-and-set is
        checked on every read: of two editors who read the same version only one wins, the
        other's retry reads the winner's version and gets VersionMismatch. Raise UnknownAgent."""
        from voxline.agents import UnknownAgent

        for _ in range(WRITE_ATTEMPTS):
            try:
                entry = await self.kv.get(agent_id)
            except (KeyNotFoundError, KeyDeletedError):
                raise UnknownAgent(f"unknown agent {agent_id!r}") from None
            if entry.value is None:
                raise UnknownAgent(f"unknown agent {agent_id!r}")
            read = entry.revision or 0
            if expected is not None and not expected(read):
                raise VersionMismatch(agent_id, read)
            agent = change(self.store.parse(msgspec.json.decode(entry.value), agent_id))
            data = encode(agent)
            try:
                revision = await self.kv.update(agent_id, data, last=read)
            except KeyWrongLastSequenceError:  # written since it was read: read again (and
                continue  # with If-Match, the version read now no longer matches)
            self.apply(agent_id, data, revision)
            return Versioned(agent, revision)
        raise WriteConflict(f"agent {agent_id!r} kept changing; try again")

    async def _revision(self, agent_id: str) -> int:
        try:
            return (await self.kv.get(agent_id)).revision or 0
        except (KeyNotFoundError, KeyDeletedError):
            return 0

    async def delete(self, agent_id: str, expected: Callable[[int], bool] | None = None) -> bool:
        """False when there is no such agent. The delete marker's revision is applied here
        at once, so this service's next read does not find the agent. With `expected` (If-Match)
        the marker is written only over the revision read (compare-and-set), else
        VersionMismatch."""
        try:
            entry = await self.kv.get(agent_id)
        except (KeyNotFoundError, KeyDeletedError):
            return False
        read = entry.revision or 0
        if expected is not None and not expected(read):
            raise VersionMismatch(agent_id, read)
        # nats-py's KeyValue.delete does not return the marker's revision: the same
        # message, published here, does (https://docs.nats.io/nats-concepts/jetstream/key-value-store).
        marker = {"KV-Operation": "DEL"}
        if expected is not None:
            marker["Nats-Expected-Last-Subject-Sequence"] = str(read)
        try:
            ack = await self.bus.nc.jetstream().publish(f"$KV.{AGENTS_BUCKET}.{agent_id}", b"", headers=marker)
        except APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:  # written since it was read
                raise VersionMismatch(agent_id, await self._revision(agent_id)) from None
            raise
        self.apply(agent_id, None, ack.seq)
        return True


def encode(agent: Agent) -> bytes:
    return msgspec.json.encode(agent)
