"""The NATS bus client every service uses: reconnecting connection, typed publish and
subscribe over the `proto` contract, drain on shutdown.

Handlers never take a service down: a message outside the contract is logged with its
subject and dropped, and a handler's exception is logged with the call id.

Every subscription's client-side queue is bounded: a handler that falls behind makes
nats-py drop messages (a slow consumer) instead of the process growing without limit.
A call's own subjects get a small bound (hundreds of calls each hold several); the drops
are counted per kind of subject (`voxline_bus_slow_consumers_total{subject}`, never a
call id) and logged at most once per kind every `SLOW_CONSUMER_LOG_INTERVAL_S`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import Counter

from proto import AudioFrame, decode, encode, subjects
from proto.headers import CALL_ID
from proto.messages import Message

log = logging.getLogger("voxline.bus")

MessageHandler = Callable[[Message, Msg], Awaitable[None]]
FrameHandler = Callable[[AudioFrame, Msg], Awaitable[None]]
StructT = TypeVar("StructT", bound=msgspec.Struct)
PING_INTERVAL_S = 2
MAX_OUTSTANDING_PINGS = 2

# Pending limits of a subscription's client-side queue. A call's subject carries at most
# a few hundred messages in a burst (a reply's audio comes faster than real time: 100 ms
# chunks of several sentences at once); 2000 is seconds of backlog for one call, and a
# few MB at most, times every call a process holds. Shared subjects (work queues, every
# call's cancels) carry the whole process's traffic.
PER_CALL_PENDING_MSGS = 2_000
PER_CALL_PENDING_BYTES = 4 * 1024 * 1024
SHARED_PENDING_MSGS = 100_000
SHARED_PENDING_BYTES = 64 * 1024 * 1024
SLOW_CONSUMER_LOG_INTERVAL_S = 10.0

SLOW_CONSUMERS = Counter(
    "voxline_bus_slow_consumers",
    "Messages dropped because a subscription's handler fell behind (NATS slow consumer), by kind of subject.",
    ["subject"],
)


def pending_limits(subject: str) -> tuple[int, int]:
    """(messages, bytes) a subscription to `subject` may hold unhandled."""
    if subjects.per_call(subject):
        return PER_CALL_PENDING_MSGS, PER_CALL_PENDING_BYTES
    return SHARED_PENDING_MSGS, SHARED_PENDING_BYTES


class Bus:
    def __init__(self, name: str) -> None:
        self.name = name
        self._nc: Client | None = None
        self._buckets: dict[str, KeyValue] = {}
        self.decode_errors = 0
        # Subscriptions (by sid) that dropped messages: nats-py reports a slow consumer
        # through the error callback each time its pending queue is full.
        self.slow_consumer_sids: set[int] = set()
        self._slow_logged: dict[str, tuple[float, int]] = {}  # kind -> (last log line, drops since)
        # Counts disconnects: what was seen over the bus before one proves nothing after it
        # (a lease that did not move while we were cut off may have been renewed meanwhile).
        self.connection_epoch = 0
        self.kv_replicas = 1  # copies of each KV bucket this bus creates (CommonSettings.kv_replicas)

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise RuntimeError("bus not connected")
        return self._nc

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def connect(self, url: str) -> None:
        async def on_error(exc: Exception) -> None:
            if isinstance(exc, nats.errors.SlowConsumerError):
                self.slow_consumer(exc.subject, exc.sid)
                return
            log.warning("nats error: %s", exc)

        async def on_disconnect() -> None:
            self.connection_epoch += 1
            log.warning("nats disconnected")

        async def on_reconnect() -> None:
            log.info("nats reconnected")

        self._nc = await nats.connect(
            servers=[u.strip() for u in url.split(",") if u.strip()],  # a cluster: any node will do
            name=self.name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            connect_timeout=2,
            allow_reconnect=True,
            # A silent partition is noticed in PING_INTERVAL_S * (MAX_OUTSTANDING_PINGS + 1)
            # seconds, not nats-py's default of minutes (120 s x 2).
            ping_interval=PING_INTERVAL_S,
            max_outstanding_pings=MAX_OUTSTANDING_PINGS,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            pending_size=64 * 1024 * 1024,
        )
        log.info("connected to nats at %s", url)

    def slow_consumer(self, subject: str, sid: int) -> None:
        """nats-py dropped a message on `subject`: its subscription's queue was full (it
        reports every drop through the error callback, so a burst is hundreds of calls)."""
        kind = subjects.kind_of(subject)
        self.slow_consumer_sids.add(sid)
        SLOW_CONSUMERS.labels(subject=kind).inc()
        now = time.monotonic()
        last, unlogged = self._slow_logged.get(kind, (float("-inf"), 0))
        if now - last < SLOW_CONSUMER_LOG_INTERVAL_S:
            self._slow_logged[kind] = (last, unlogged + 1)
            return
        self._slow_logged[kind] = (now, 0)
        since = f" ({unlogged} more since the last report)" if unlogged else ""
        log.warning("slow consumer on %s: a handler fell behind and a message was dropped%s", kind, since)

    async def close(self) -> None:
        """Drain: finish handling what was received, flush what was published, then close."""
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.drain()
            except Exception as exc:  # a drain during shutdown may race a dead server
                log.warning("nats drain failed: %s", exc)

    async def publish(self, subject: str, message: Message, headers: dict[str, str] | None = None) -> None:
        await self.nc.publish(subject, encode(message), headers=headers)

    async def publish_frame(self, subject: str, frame: AudioFrame, headers: dict[str, str] | None = None) -> None:
        await self.nc.publish(subject, frame.encode(), headers=headers)

    async def request(
        self, subject: str, message: Message, timeout: float, headers: dict[str, str] | None = None
    ) -> Message:
        """Raise nats.errors.TimeoutError / NoRespondersError when nobody answers."""
        reply = await self.nc.request(subject, encode(message), timeout=timeout, headers=headers)
        return decode(reply.data)

    async def respond(self, msg: Msg, message: Message) -> None:
        await msg.respond(encode(message))

    async def serve_ping(self, subject: str) -> Subscription:
        """Answer every request on `subject` with an empty reply (a liveness check)."""

        async def on_ping(msg: Msg) -> None:
            if msg.reply:
                await msg.respond(b"")

        return await self.nc.subscribe(subject, cb=on_ping)

    async def ping(self, subject: str, timeout: float) -> None:
        """Ask whoever serves `serve_ping` on `subject`; raise nats.errors.TimeoutError /
        NoRespondersError when it does not answer in time."""
        await self.nc.request(subject, b"", timeout=timeout)

    async def subscribe(self, subject: str, handler: MessageHandler, queue: str = "") -> Subscription:
        async def on_message(msg: Msg) -> None:
            try:
                message = decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.decode_errors += 1
                log.error("dropped a message outside the contract on %s: %s", msg.subject, exc)
                return
            try:
                await handler(message, msg)
            except Exception:
                log.exception(
                    "handler failed on %s", msg.subject, extra={"call_id": (msg.headers or {}).get(CALL_ID, "")}
                )

        msgs, size = pending_limits(subject)
        return await self.nc.subscribe(
            subject, queue=queue, cb=on_message, pending_msgs_limit=msgs, pending_bytes_limit=size
        )

    async def subscribe_frames(self, subject: str, handler: FrameHandler) -> Subscription:
        async def on_frame(msg: Msg) -> None:
            try:
                frame = AudioFrame.decode(msg.data)
            except ValueError as exc:
                self.decode_errors += 1
                log.error("dropped a bad audio frame on %s: %s", msg.subject, exc)
                return
            try:
                await handler(frame, msg)
            except Exception:
                log.exception("frame handler failed on %s", msg.subject)

        msgs, size = pending_limits(subject)
        return await self.nc.subscribe(subject, cb=on_frame, pending_msgs_limit=msgs, pending_bytes_limit=size)

    # --- JetStream key-value: durable per-call state (call records) ---------------------

    async def create_bucket(self, bucket: str, ttl_s: float, history: int = 1) -> None:
        """Create the bucket if it does not exist yet (idempotent across instances), with
        `kv_replicas` copies: on a NATS cluster, call state must outlive one node."""
        js = self.nc.jetstream()
        self._buckets[bucket] = await js.create_key_value(
            bucket=bucket, history=history, ttl=ttl_s, replicas=self.kv_replicas
        )

    async def _bucket(self, bucket: str) -> KeyValue:
        kv = self._buckets.get(bucket)
        if kv is None:
            kv = self._buckets[bucket] = await self.nc.jetstream().key_value(bucket)
        return kv

    async def kv_put(self, bucket: str, key: str, value: msgspec.Struct) -> None:
        await (await self._bucket(bucket)).put(key, msgspec.json.encode(value))

    async def kv_get(self, bucket: str, key: str, kind: type[StructT]) -> StructT | None:
        """The value under `key`, or None when the bucket or the key does not exist.
        Raise msgspec.ValidationError when the stored value is not a `kind`."""
        try:
            entry = await (await self._bucket(bucket)).get(key)
        except (KeyNotFoundError, BucketNotFoundError):
            return None
        if entry.value is None:
            return None
        return msgspec.json.decode(entry.value, type=kind)

    async def kv_entry(self, bucket: str, key: str, kind: type[StructT]) -> tuple[StructT, int] | None:
        """The value under `key` and its revision (for a compare-and-set), or None when the
        bucket or the key does not exist."""
        try:
            entry = await (await self._bucket(bucket)).get(key)
        except (KeyNotFoundError, KeyDeletedError, BucketNotFoundError):
            return None
        if entry.value is None:
            return None
        return msgspec.json.decode(entry.value, type=kind), entry.revision or 0

    # --- compare-and-set, for ownership (proto/ownership.py) ----------------------------

    async def kv_create(self, bucket: str, key: str, value: msgspec.Struct) -> int:
        """Write `key` only if it does not exist; its revision. Raise RevisionMismatch if it does."""
        try:
            return await (await self._bucket(bucket)).create(key, msgspec.json.encode(value))
        except KeyWrongLastSequenceError as exc:
            raise RevisionMismatch(f"{bucket}/{key} exists") from exc

    async def kv_update(self, bucket: str, key: str, value: msgspec.Struct | bytes, last: int) -> int:
        """Write `key` only if its revision is still `last`; the new revision. Raise
        RevisionMismatch when someone else wrote it meanwhile."""
        data = value if isinstance(value, bytes) else msgspec.json.encode(value)
        try:
            return await (await self._bucket(bucket)).update(key, data, last=last)
        except KeyWrongLastSequenceError as exc:
            raise RevisionMismatch(f"{bucket}/{key} moved past revision {last}") from exc

    async def kv_put_bytes(self, bucket: str, key: str, value: bytes) -> int:
        return await (await self._bucket(bucket)).put(key, value)

    async def kv_get_bytes(self, bucket: str, key: str) -> bytes | None:
        try:
            entry = await (await self._bucket(bucket)).get(key)
        except (KeyNotFoundError, KeyDeletedError, BucketNotFoundError):
            return None
        return entry.value

    async def kv_delete(self, bucket: str, key: str) -> None:
        await (await self._bucket(bucket)).delete(key)

    async def kv_watch(self, bucket: str) -> AsyncIterator[KvChange]:
        """Every entry of the bucket, then every change to it, as it happens (a deleted
        key comes with value None)."""
        watcher = await (await self._bucket(bucket)).watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    continue  # the end of the entries that existed when the watch began
                deleted = entry.operation is not None
                yield KvChange(entry.key, None if deleted else entry.value, entry.revision or 0)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped


class RevisionMismatch(Exception):
    """A compare-and-set lost: the entry is not at the revision the writer last saw."""


class KvChange(msgspec.Struct, frozen=True):
    key: str
    value: bytes | None  # None: deleted
    revision: int
