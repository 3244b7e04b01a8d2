"""One real stack for the integration tests: nats-server and the five services as
processes on free ports, exactly what `voxline up` starts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from voxline.devstack import DevStack, free_port

AUTH_TOKEN = "test-twilio-auth-token-0001"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    logs = tmp_path_factory.mktemp("logs")
    env = {
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "VOXLINE_LOG_LEVEL": "INFO",
        # Fixed, short provider latencies keep the suite quick; benchmarks set their own.
        "VOXLINE_FAKE_TTFT_MS": "80",
        "VOXLINE_FAKE_TTFB_MS": "40",
        "VOXLINE_FAKE_STT_LATENCY_MS": "20",
        "VOXLINE_BRAIN_TIMEOUT_S": "2",
    }
    s = DevStack(
        profile="fake",
        http_port=free_port(),
        data_dir=tmp_path_factory.mktemp("nats"),
        log_dir=logs,
        extra_env=env,
        verbose=False,
    )
    try:
        s.start(timeout=90)
    except Exception:
        s.stop()
        for f in sorted(Path(logs).glob("*.log")):
            print(f"--- {f.name}\n{f.read_text()[-3000:]}")
        raise
    yield s
    s.stop()
    if os.environ.get("VOXLINE_KEEP_LOGS"):
        print(f"service logs in {logs}")


def service_log(stack: DevStack, name: str) -> str:
    assert stack.log_dir is not None
    return (stack.log_dir / f"{name}.log").read_text()


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll a condition the system exposes (no sleep stands in for an event we could await)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
