"""Named one-shot timers for a call: watchdogs on the brain and TTS, end-of-turn waits.

A worker can die mid-turn; its queue-group peers take the next request, but the one in
flight is lost. A watchdog per request turns that loss into a defined outcome (retry,
apology) instead of a silent line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger("voxline.orchestrator.timers")


class Timers:
    def __init__(self) -> None:
        self._tasks: dict[Hashable, asyncio.Task[None]] = {}

    def start(self, key: Hashable, seconds: float, callback: Callable[[], Awaitable[None]]) -> None:
        self.cancel(key)

        async def fire() -> None:
            await asyncio.sleep(seconds)
            self._tasks.pop(key, None)
            try:
                await callback()
            except Exception:
                log.exception("timer %r failed", key)

        self._tasks[key] = asyncio.create_task(fire())

    def cancel(self, key: Hashable) -> None:
        task = self._tasks.pop(key, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def cancel_where(self, predicate: Callable[[Hashable], bool]) -> None:
        for key in [k for k in self._tasks if predicate(k)]:
            self.cancel(key)

    def cancel_all(self) -> None:
        self.cancel_where(lambda _: True)

    def __len__(self) -> int:
        return len(self._tasks)
