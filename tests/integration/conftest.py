"""One real stack for the integration tests: nats-server and the five services as
processes on free ports, exactly what `voxline up` starts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import nats
import pytest
from nats.aio.msg import Msg

from proto import decode, subjects
from proto.messages import Message
from voxline.agents import BUNDLED_DIR
from voxline.devstack import DevStack, free_ports_in_a_row, ports_for
from voxline.nats_auth import NatsUsers
from voxline.simulator import CallScript, Utterance

AUTH_TOKEN = "test-twilio-auth-token-0001"

# An agent that gives up on silent callers quickly, for the idle tests.
QUICK_IDLE_AGENT = """
name = "Quick idle"
greeting = "Hello."
system_prompt = "You are a test agent."
goodbye = "Goodbye."

[turn]
idle_reprompt_s = 1.5
idle_hangup_s = 3.0
reprompt = "Are you still there?"
"""

# An agent that waits minutes for a silent caller: for tests whose caller stays silent
# while processes are replaced under the call.
PATIENT_AGENT = """
name = "Patient"
greeting = "Hello."
system_prompt = "You are a test agent."
goodbye = "Goodbye."

[turn]
idle_reprompt_s = 120.0
idle_hangup_s = 240.0
reprompt = "Are you still there?"
"""


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    with own_stack(tmp_path_factory, "stack", {"VOXLINE_BRAIN_TIMEOUT_S": "2"}) as s:
        yield s


@contextlib.contextmanager
def own_stack(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    env: dict[str, str],
    replicas: int = 1,
    nats_url: str = "",
    nats_users: NatsUsers | None = None,
) -> Iterator[DevStack]:
    """A stack of its own, for a module that kills or replaces its processes; `env` adds
    to (or overrides) the suite's settings; `nats_url`: NATS the test started (else one
    of the stack's own) with `nats_users` (the config it was started with: a user per
    service, as the stack's own server has)."""
    logs = tmp_path_factory.mktemp(f"{name}-logs")
    agents = tmp_path_factory.mktemp(f"{name}-agents")
    shutil.copy(BUNDLED_DIR / "demo.toml", agents / "demo.toml")
    (agents / "quick-idle.toml").write_text(QUICK_IDLE_AGENT)
    (agents / "patient.toml").write_text(PATIENT_AGENT)
    base = {
        "VOXLINE_AGENTS_DIR": str(agents),
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "VOXLINE_LOG_LEVEL": "INFO",
        # Fixed, short provider latencies keep the suite quick; benchmarks set their own.
        "VOXLINE_FAKE_TTFT_MS": "80",
        "VOXLINE_FAKE_TTFB_MS": "40",
        "VOXLINE_FAKE_STT_LATENCY_MS": "20",
    }
    s = DevStack(
        profile="fake",
        http_port=free_ports_in_a_row(ports_for(replicas)),
        data_dir=tmp_path_factory.mktemp(f"{name}-nats"),
        log_dir=logs,
        extra_env={**base, **env},
        verbose=False,
        replicas=replicas,
        nats_url=nats_url,
        nats_users=nats_users,
    )
    try:
        s.start(timeout=90)
    except Exception:
        s.stop()
        for f in sorted(Path(logs).glob("*.log")):
            print(f"--- {f.name}\n{f.read_text()[-3000:]}")
        raise
    try:
        yield s
    finally:
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


T = TypeVar("T")


class BusSpy:
    """Watches real bus traffic from the test, like `nats sub` would: nothing is mocked."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, Message]] = []

    def of_type(self, kind: type[T]) -> list[T]:
        return [m for _, m in self.messages if isinstance(m, kind)]


@pytest.fixture
async def bus_spy(stack: DevStack) -> AsyncIterator[BusSpy]:
    async with watching(stack.probe_url) as spy:
        yield spy


@contextlib.asynccontextmanager
async def watching(nats_url: str) -> AsyncIterator[BusSpy]:
    """Brain requests, cancels and call controls on the bus at `nats_url`, as they pass
    (a stack's `probe_url`: the test user may subscribe to anything)."""
    spy = BusSpy()
    nc = await nats.connect(nats_url)

    async def on_message(msg: Msg) -> None:
        try:
            spy.messages.append((msg.subject, decode(msg.data)))
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass  # binary audio frames

    for subject in (subjects.BRAIN_TURN, "vx1.call.*.cancel", "vx1.call.*.control"):
        await nc.subscribe(subject, cb=on_message)
    await nc.flush()
    yield spy
    await nc.drain()


def script_for(*utterances: Utterance, **kwargs: Any) -> CallScript:
    """A call whose fake STT hears exactly what each utterance says, in order."""
    heard = [t for u in utterances for t in u.transcripts()]
    return CallScript(utterances=list(utterances), extra_parameters={"fake_transcripts": "|".join(heard)}, **kwargs)
