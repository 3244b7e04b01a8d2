"""The test's side of a real bus: publishes and requests through a real `Bus`, and records
everything on `vx1.>` (like `nats sub`), so a test sees what the worker under test published;
and the server's own view of a connection's subscriptions."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import msgspec
from nats.aio.msg import Msg

from proto import AudioFrame, decode
from proto.messages import Message
from voxline.bus import Bus

T = TypeVar("T")

MARKER_PREFIX = "vx1.test.marker"


async def settle(bus: Bus) -> None:
    """Return once the server has processed everything `bus` sent so far, subscriptions
    included, so a worker is listening once this returns. The connection sends itself a
    message, which the server handles after every command sent before it. (nats-py's
    `flush()` is no such barrier: it writes its PING ahead of commands still pending.)"""
    echoed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_echo(_: Msg) -> None:
        if not echoed.done():
            echoed.set_result(None)

    subject = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(subject, cb=on_echo)
    await sub.unsubscribe(limit=1)  # the server forgets it once the echo is delivered
    await bus.nc.publish(subject)
    await asyncio.wait_for(echoed, timeout=5)


@dataclass(frozen=True)
class NatsServer:
    url: str
    monitor_url: str

    async def subscriptions(self, bus: Bus) -> list[str]:
        """The subjects `bus` subscribes to, as the server sees them once it has processed
        everything the connection sent so far."""
        await settle(bus)
        async with httpx.AsyncClient() as http:
            reply = await http.get(f"{self.monitor_url}/connz", params={"cid": bus.nc.client_id, "subs": 1})
        reply.raise_for_status()
        [connection] = reply.json()["connections"]
        return sorted(connection.get("subscriptions_list", []))


@dataclass(frozen=True)
class Seen:
    subject: str
    item: Message | AudioFrame | bytes  # bytes: a payload outside the contract
    headers: dict[str, str]


class Probe:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.seen: list[Seen] = []  # in arrival order: one subscription delivers everything
        self._sent_to: set[str] = set()
        self._changed = asyncio.Condition()
        self._markers = itertools.count()

    @classmethod
    async def connect(cls, url: str) -> Probe:
        bus = Bus("test-probe")
        await bus.connect(url)
        probe = cls(bus)
        await bus.nc.subscribe("vx1.>", cb=probe._on_message)
        await settle(bus)  # the server knows the subscription before the test sends anything
        return probe

    async def close(self) -> None:
        await self.bus.close()

    async def _on_message(self, msg: Msg) -> None:
        item: Message | AudioFrame | bytes
        try:
            item = AudioFrame.decode(msg.data) if ".audio." in msg.subject else decode(msg.data)
        except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
            item = msg.data
        async with self._changed:
            self.seen.append(Seen(msg.subject, item, dict(msg.headers or {})))
            self._changed.notify_all()

    # --- sending -----------------------------------------------------------------------

    async def publish(self, subject: str, message: Message) -> None:
        self._sent_to.add(subject)
        await self.bus.publish(subject, message)

    async def publish_frame(self, subject: str, frame: AudioFrame) -> None:
        self._sent_to.add(subject)
        await self.bus.publish_frame(subject, frame)

    async def request(self, subject: str, message: Message, timeout: float = 5.0) -> Message:
        self._sent_to.add(subject)
        return await self.bus.request(subject, message, timeout)

    # --- observing ---------------------------------------------------------------------

    def received(self) -> list[Seen]:
        """What others published: neither the probe's own messages nor markers."""
        return [s for s in self.seen if s.subject not in self._sent_to and not s.subject.startswith(MARKER_PREFIX)]

    def of(self, kind: type[T]) -> list[T]:
        return [s.item for s in self.received() if isinstance(s.item, kind)]

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(condition), timeout)
            except TimeoutError:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; seen {self.received()}") from None

    async def wait_for(self, kind: type[T], count: int = 1) -> list[T]:
        await self.until(lambda: len(self.of(kind)) >= count, f"{count} {kind.__name__}")
        return self.of(kind)

    async def caught_up(self, bus: Bus) -> None:
        """Return once everything `bus` published so far has been recorded: a marker sent
        through that connection arrives after it, because NATS keeps one publisher's
        messages in order to one subscription."""
        subject = f"{MARKER_PREFIX}.{next(self._markers)}"
        await bus.nc.publish(subject, b"")
        await self.until(lambda: any(s.subject == subject for s in self.seen), f"the marker sent by {bus.name}")
