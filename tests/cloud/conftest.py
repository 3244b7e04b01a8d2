"""Helpers for tests of the cloud providers against local emulators of their wire protocols.

Emulators run on their own event loop in a background thread: they must outlive each
test's loop (pytest-asyncio gives every test a new one) and serve the stack's service
processes while the test itself waits on its own loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import pytest

from tests.emulators.openai_chat import OpenAiChatEmulator
from tests.emulators.twilio_rest import TwilioRestEmulator
from tests.integration.conftest import AUTH_TOKEN
from voxline.devstack import DevStack, free_port

T = TypeVar("T")


class BackgroundLoop:
    """An asyncio loop in a daemon thread; `run` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="emulator-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class Emulator(Protocol):
    async def start(self) -> int: ...

    async def stop(self) -> None: ...


@pytest.fixture(scope="session")
def emulator_loop() -> Iterator[BackgroundLoop]:
    background = BackgroundLoop()
    yield background
    background.close()


E = TypeVar("E", bound=Emulator)


def start_emulator(loop: BackgroundLoop, emulator: E) -> E:
    """Start an emulator on 127.0.0.1, port 0 (it records the port it got)."""
    loop.run(emulator.start())
    return emulator


class ThreadedEmulator(Protocol):
    """An emulator that serves from a thread of its own (the aiohttp-based ones)."""

    def start(self) -> Any: ...

    def stop(self) -> None: ...


R = TypeVar("R", bound=ThreadedEmulator)


def running(emulator: R) -> Iterator[R]:
    """The body of a fixture for a threaded emulator: `yield from running(X())`."""
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


def start_stack(tmp_path_factory: pytest.TempPathFactory, name: str, extra_env: Mapping[str, str]) -> DevStack:
    """The real stack (profile fake) with some providers switched by `extra_env`."""
    logs = tmp_path_factory.mktemp(f"logs-{name}")
    env = {
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "VOXLINE_LOG_LEVEL": "INFO",
        "VOXLINE_FAKE_TTFT_MS": "80",
        "VOXLINE_FAKE_TTFB_MS": "40",
        "VOXLINE_FAKE_STT_LATENCY_MS": "20",
        **extra_env,
    }
    stack = DevStack(
        profile="fake",
        http_port=free_port(),
        data_dir=tmp_path_factory.mktemp(f"nats-{name}"),
        log_dir=logs,
        extra_env=env,
        verbose=False,
    )
    try:
        stack.start(timeout=90)
    except Exception:
        stack.stop()
        for f in sorted(Path(logs).glob("*.log")):
            print(f"--- {f.name}\n{f.read_text()[-3000:]}")
        raise
    if os.environ.get("VOXLINE_KEEP_LOGS"):
        print(f"service logs in {logs}")
    return stack


def all_logs(stack: DevStack) -> str:
    assert stack.log_dir is not None
    return "\n".join(f.read_text() for f in sorted(stack.log_dir.glob("*.log")))


class LogsSince:
    """The service logs as written after this point. A module's stack appends to the same
    files across tests and restarts, so a line asserted on the whole file may have been
    logged by an earlier test: the test would pass without the behaviour it checks."""

    def __init__(self, stack: DevStack) -> None:
        assert stack.log_dir is not None
        self._dir = stack.log_dir
        self._start = {path.name: path.stat().st_size for path in self._dir.glob("*.log")}

    def of(self, service: str) -> str:
        path = self._dir / f"{service}.log"
        with path.open("rb") as log:
            log.seek(self._start.get(path.name, 0))
            return log.read().decode(errors="replace")

    def all(self) -> str:
        return "\n".join(self.of(path.stem) for path in sorted(self._dir.glob("*.log")))


@pytest.fixture
def new_logs(stack: DevStack) -> LogsSince:
    """What the stack logs during this test (each module defines its own `stack`)."""
    return LogsSince(stack)


async def metrics(stack: DevStack, service: str) -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://127.0.0.1:{stack.health_port(service)}/metrics")).text


def counter_value(metrics_text: str, name: str, **labels: str) -> float:
    """A sample of a Prometheus text exposition (0 when absent); labels must all match."""
    for line in metrics_text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def chat() -> Iterator[OpenAiChatEmulator]:
    yield from running(OpenAiChatEmulator())


@pytest.fixture(scope="module")
def twilio() -> Iterator[TwilioRestEmulator]:
    yield from running(TwilioRestEmulator(auth_token=AUTH_TOKEN))
