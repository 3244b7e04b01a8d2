"""Limits at the media WebSocket, for traffic that is not (yet) known to be Twilio's.

Two kinds, for two threats. Before a stream has sent an authenticated `start`, anyone can
hold a connection: those are counted per source address and in all (`PendingStreams`), so
a flood of idle sockets cannot exhaust the gateway. Twilio's own streams all come from a
few addresses, so authenticated streams are never limited per source; each is held to a
message rate instead (`MessageBudget`), well above what Twilio sends.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable


class MessageBudget:
    """A token bucket: `rate_per_s` messages a second on average, `burst` at once.

    Twilio sends 50 media messages a second and one mark echo per chunk we send (about 50
    more); after a network hiccup it may deliver seconds of buffered messages at once,
    which the burst absorbs."""

    def __init__(self, rate_per_s: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def take(self) -> bool:
        """Spend one message; False when the budget is exhausted."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class PendingSlot:
    """One unauthenticated connection's place; released once, when it authenticates or ends."""

    def __init__(self, pending: PendingStreams, source: str) -> None:
        self._pending: PendingStreams | None = pending
        self.source = source

    def release(self) -> None:
        if self._pending is not None:
            self._pending._release(self.source)
            self._pending = None


class PendingStreams:
    def __init__(self, per_source: int, total: int) -> None:
        self.per_source = per_source
        self.total = total
        self._by_source: Counter[str] = Counter()
        self._count = 0

    def admit(self, source: str) -> PendingSlot | None:
        """A slot for a new connection from `source`, or None when it must be refused."""
        if self._count >= self.total or self._by_source[source] >= self.per_source:
            return None
        self._count += 1
        self._by_source[source] += 1
        return PendingSlot(self, source)

    def _release(self, source: str) -> None:
        self._count -= 1
        self._by_source[source] -= 1
        if self._by_source[source] <= 0:
            del self._by_source[source]

    @property
    def count(self) -> int:
        return self._count
