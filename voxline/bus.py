"""The NATS bus client every service uses: reconnecting connection, typed publish and
subscribe over the `proto` contract, drain on shutdown.

Handlers never take a service down: a message outside the contract is logged with its
subject and dropped, and a handler's exception is logged with the call id.

Every subscription's client-side queue is bounded: a handler that falls behind makes
nats-py drop messages (a slow consumer) instead of the process growing without limit.
A call's own subjects get a small bound (hundreds of calls each hold several); the drops
are counted per kind of subject (`voxline_bus_slow_consumers_total{subject}`, never a
call id) and logged at most once per kind every `SLOW_CONSUMER_LOG_INTERVAL_S`.

On a server with authorization (`proto/permissions.py`), the service connects as its own
user. NATS answers a publish or subscribe outside that user's permissions with an error the
client only hears through its error callback while the message is silently not delivered:
the bus logs each such refusal as an error naming the subject's kind and counts it
(`voxline_bus_permission_violations_total{operation,subject}`), so a contract the table
forgot shows up at once instead of as a call that stalls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
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
from pydantic import SecretStr

from proto import AudioFrame, decode, encode, subjects
from proto.headers import CALL_ID
from proto.messages import Message
from proto.permissions import inbox_prefix
from voxline.nats_auth import redact_url

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
PERMISSION_VIOLATIONS = Counter(
    "voxline_bus_permission_violations",
    "Publishes and subscribes the NATS server refused: outside this service's permissions (proto/permissions.py).",
    ["operation", "subject"],
)
# nats-py passes the server's -ERR on (lower-cased): permissions violation for publish to "x"
_VIOLATION = re.compile(r"permissions violation for (publish|subscription) to \"?([^\"\s]+)", re.IGNORECASE)


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
        self._logged: dict[str, tuple[float, int]] = {}  # what -> (last log line, repeats since)
        self.permission_violations = 0
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

    async def connect(
        self, url: str, *, user: str = "", password: SecretStr | None = None, tls_ca_file: str = ""
    ) -> None:
        """Connect to `url` (several: a cluster's nodes), as `user` when given (the server's
        per-service user: replies then come under that user's own inbox prefix, the only
        one it may subscribe to); with `tls_ca_file`, TLS checked against that CA."""

        async def on_error(exc: Exception) -> None:
            if isinstance(exc, nats.errors.SlowConsumerError):
                self.slow_consumer(exc.subject, exc.sid)
                return
            violation = _VIOLATION.search(str(exc))
            if violation:
                self.permission_violation(violation[1].lower(), violation[2])
                return
            if _refused(exc):
                if not refused.is_set():  # once: nats-py retries (and reports) several times a second
                    log.error("%s", CredentialsRefused(user))
                refused.set()  # at connect: give up (the caller retries); later: nats-py retries
                return
            log.warning("nats error: %s", exc)

        async def on_disconnect() -> None:
            self.connection_epoch += 1
            log.warning("nats disconnected")

        async def on_reconnect() -> None:
            log.info("nats reconnected")

        refused = asyncio.Event()
        connecting = asyncio.create_task(
            nats.connect(
                servers=[u.strip() for u in url.split(",") if u.strip()],  # a cluster: any node will do
                name=self.name,
                user=user or None,
                password=password.get_secret_value() if user and password else None,
                inbox_prefix=inbox_prefix(user) if user else "_INBOX",
                tls=ssl.create_default_context(cafile=tls_ca_file) if tls_ca_file else None,
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
        )
        # nats-py would retry refused credentials for ever (max_reconnect_attempts=-1 covers
        # the first connection too): a refusal ends the attempt, with an error that says so.
        waiting = asyncio.create_task(refused.wait())
        try:
            await asyncio.wait({connecting, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            if not connecting.done():
                connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await connecting
        if connecting.cancelled():
            raise CredentialsRefused(user)
        self._nc = connecting.result()
        refused.clear()
        log.info("connected to nats at %s%s", redact_url(url), f" as {user}" if user else "")

    def slow_consumer(self, subject: str, sid: int) -> None:
        """nats-py dropped a message on `subject`: its subscription's queue was full (it
        reports every drop through the error callback, so a burst is hundreds of calls)."""
        kind = subjects.kind_of(subject)
        self.slow_consumer_sids.add(sid)
        SLOW_CONSUMERS.labels(subject=kind).inc()
        since = self._throttled(f"slow {kind}")
        if since is not None:
            log.warning("slow consumer on %s: a handler fell behind and a message was dropped%s", kind, since)

    def permission_violation(self, operation: str, subject: str) -> None:
        """The server refused to let this service publish to or subscribe to `subject`: the
        message went nowhere (or the subscription gets nothing). Logged as an error once per
        kind of subject every `SLOW_CONSUMER_LOG_INTERVAL_S` (a refused audio subject is 50
        refusals a second), and counted."""
        operation = "subscribe" if operation.startswith("sub") else "publish"
        kind = "_INBOX" if subject[:7].lower() == "_inbox." else subjects.kind_of(subject)
        if kind == "other" and subject.startswith("$"):  # JetStream: the API and stream, or the bucket
            parts = subject.split(".")
            kind = ".".join(parts[: 2 if parts[0] == "$kv" else 5 if parts[1:2] == ["api"] else 3])
        self.permission_violations += 1
        PERMISSION_VIOLATIONS.labels(operation=operation, subject=kind).inc()
        since = self._throttled(f"{operation} {kind}")
        if since is not None:
            log.error(
                "nats permissions violation: %s to %s refused for %s; nothing was delivered "
                "(proto/permissions.py does not allow it)%s",
                operation,
                kind,
                self.name,
                since,
            )

    def _throttled(self, what: str) -> str | None:
        """None when `what` was logged within the interval (counted); else what to append to
        the log line about the repeats not logged since the last one."""
        now = time.monotonic()
        last, unlogged = self._logged.get(what, (float("-inf"), 0))
        if now - last < SLOW_CONSUMER_LOG_INTERVAL_S:
            self._logged[what] = (last, unlogged + 1)
            return None
        self._logged[what] = (now, 0)
        return f" ({unlogged} more since the last report)" if unlogged else ""

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

    async def kv_watch_key(self, bucket: str, key: str) -> AsyncIterator[KvChange]:
        """One key's value, then every change to it (None: deleted or absent at the start)."""
        async for change in _changes(await (await self._bucket(bucket)).watch(key)):
            yield change

    async def kv_watch(self, bucket: str) -> AsyncIterator[KvChange]:
        """Every entry of the bucket, then every change to it, as it happens (a deleted
        key comes with value None)."""
        async for change in _changes(await (await self._bucket(bucket)).watchall()):
            yield change


async def _changes(watcher: KeyValue.KeyWatcher) -> AsyncIterator[KvChange]:
    """A KV watch's entries as changes (a deleted key with value None), stopped when left."""
    try:
        async for entry in watcher:
            if entry is None:
                continue  # the end of the entries that existed when the watch began
            deleted = entry.operation is not None
            yield KvChange(entry.key, None if deleted else entry.value, entry.revision or 0)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped


class CredentialsRefused(nats.errors.AuthorizationError):
    """The NATS server refused this connection's user and password (or the lack of them)."""

    def __init__(self, user: str) -> None:
        super().__init__()
        self.user = user

    def __str__(self) -> str:
        who = f"the credentials of user {self.user!r}" if self.user else "a connection without credentials"
        return f"nats refused {who}: check VOXLINE_NATS_USER and VOXLINE_NATS_PASSWORD"


def _refused(exc: Exception) -> bool:
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in str(exc).lower()


class RevisionMismatch(Exception):
    """A compare-and-set lost: the entry is not at the revision the writer last saw."""


class KvChange(msgspec.Struct, frozen=True):
    key: str
    value: bytes | None  # None: deleted
    revision: int
