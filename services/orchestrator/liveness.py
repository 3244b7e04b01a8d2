"""Is the process a call depends on still there? The STT worker holding a call's audio and
the gateway holding its media stream are sticky: when one dies, nothing else would notice,
and the caller would sit on a dead line. Brain and TTS requests go to queue groups and have
per-request watchdogs instead.

Each peer is pinged every `interval_s`; two pings missed in a row and it is gone. A bus that
was down is not a peer's death: every process reconnects on its own schedule, so misses do
not count until `grace_s` after our own reconnection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats.errors

from voxline.bus import Bus

log = logging.getLogger("voxline.orchestrator.liveness")

PING_INTERVAL_S = 1.0
PING_TIMEOUT_S = 0.5
RECONNECT_GRACE_S = 5.0
MISSES_FOR_GONE = 2


class PeerWatch:
    def __init__(
        self,
        bus: Bus,
        what: str,
        ping_subject: Callable[[str], str],
        peers: Callable[[], set[str]],
        on_gone: Callable[[str], Awaitable[None]],
    ) -> None:
        self.bus = bus
        self.what = what
        self._ping_subject = ping_subject
        self._peers = peers
        self._on_gone = on_gone
        self._misses: dict[str, int] = {}

    async def run(self) -> None:
        epoch, counting_from = self.bus.connection_epoch, 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            if not self.bus.connected:
                continue
            if self.bus.connection_epoch != epoch:
                epoch, counting_from = self.bus.connection_epoch, loop.time() + RECONNECT_GRACE_S
                self._misses.clear()
            if loop.time() < counting_from:
                continue
            for peer in self._peers():
                try:
                    await self.bus.ping(self._ping_subject(peer), PING_TIMEOUT_S)
                    self._misses.pop(peer, None)
                    continue
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    misses = self._misses[peer] = self._misses.get(peer, 0) + 1
                except Exception as exc:  # the bus itself is reconnecting: not the peer's fault
                    log.warning("%s ping failed: %s", self.what, exc)
                    continue
                if misses >= MISSES_FOR_GONE:
                    self._misses.pop(peer, None)
                    try:
                        await self._on_gone(peer)
                    except Exception:
                        log.exception("handling the loss of %s %s failed", self.what, peer)
