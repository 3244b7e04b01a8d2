"""The agent store on a real nats-server: seeding an empty bucket from TOML files (once,
even with replicas starting together), the watch that keeps every service's copy current,
versions, a call's version read back by a service that never saw it, and the brain's
prompt built from the version a call started with."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest
from nats.js.errors import BucketNotFoundError, NotFoundError

from proto.messages import BrainTurn
from proto.records import AGENTS_BUCKET
from services.brain.prompt import PromptBuilder
from services.gateway.preconditions import etag, if_match
from tests.unit.bus_probe import NatsServer
from voxline.agents import BUNDLED_DIR, Agent, AgentStore, InvalidAgent, UnknownAgent
from voxline.agents.live import AgentExists, VersionMismatch
from voxline.bus import Bus

SALES = """
name = "Sales"
greeting = "Hello from sales."
system_prompt = "You sell things."
"""


@pytest.fixture
async def buses(nats_server: NatsServer) -> AsyncIterator[list[Bus]]:
    """Three services' connections, on an agents bucket that starts empty."""
    made = [Bus(f"service-{n}") for n in range(3)]
    for bus in made:
        await bus.connect(nats_server.url)
    try:
        await made[0].nc.jetstream().delete_key_value(AGENTS_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        pass
    yield made
    for bus in made:
        await bus.close()


@pytest.fixture
def agents_dir(tmp_path: Path) -> Path:
    shutil.copy(BUNDLED_DIR / "demo.toml", tmp_path / "demo.toml")
    (tmp_path / "sales.toml").write_text(SALES)
    (tmp_path / "broken.toml").write_text('name = "no greeting"\n')
    return tmp_path


async def started(bus: Bus, directory: Path) -> AgentStore:
    store = AgentStore(directory)
    await store.start(bus)
    return store


async def eventually(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait for another store's watch to deliver a change (no sleep stands in for it)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def history(bus: Bus, agent_id: str) -> list[int]:
    kv = await bus.nc.jetstream().key_value(AGENTS_BUCKET)
    return [e.revision or 0 for e in await kv.history(agent_id)]


async def test_an_empty_bucket_is_seeded_once_by_replicas_starting_together(buses: list[Bus], agents_dir: Path) -> None:
    stores = await asyncio.gather(*(started(bus, agents_dir) for bus in buses))
    for store in stores:
        # A replica that found the bucket while another was seeding it started with what
        # was there; the rest reaches it through its watch.
        await eventually(lambda store=store: store.ids() == ["demo", "sales"], "every agent on every replica")
        # the invalid file is left out, not fatal
        assert store.get("sales").greeting == "Hello from sales."
    # Each agent written once: the replicas did not overwrite each other's seed.
    assert len(await history(buses[0], "demo")) == 1
    assert len(await history(buses[0], "sales")) == 1
    assert len({store.versioned("sales")[1] for store in stores}) == 1
    await asyncio.gather(*(store.stop() for store in stores))


async def test_a_deleted_agent_is_not_seeded_again(buses: list[Bus], agents_dir: Path) -> None:
    first = await started(buses[0], agents_dir)
    assert first.live is not None and await first.live.delete("sales")
    with pytest.raises(UnknownAgent):
        first.get("sales")  # at once on the store that deleted it
    await first.stop()
    again = await started(buses[1], agents_dir)
    assert again.ids() == ["demo"]
    await again.stop()


async def test_every_store_follows_writes_and_a_call_keeps_its_version(buses: list[Bus], agents_dir: Path) -> None:
    writer, reader = await started(buses[0], agents_dir), await started(buses[1], agents_dir)
    assert writer.live is not None
    sales, v1 = reader.versioned("sales")
    updated = await writer.live.update("sales", lambda a: msgspec.structs.replace(a, greeting="Hi, sales again."))
    assert updated.version > v1
    assert writer.versioned("sales") == (updated.agent, updated.version)  # its own write, at once
    await eventually(lambda: reader.get("sales").greeting == "Hi, sales again.", "the update on the other store")
    assert reader.versioned("sales")[1] == updated.version
    assert reader.get("sales", v1).greeting == "Hello from sales."  # a call that began on v1

    # A service started after the edit never saw v1: it reads it back from the bucket.
    late = await started(buses[2], agents_dir)
    assert late.get("sales").greeting == "Hi, sales again."
    assert (await late.at("sales", v1)).greeting == "Hello from sales."
    assert late.get("sales", v1).greeting == "Hello from sales."

    with pytest.raises(AgentExists):
        await writer.live.create(sales)
    with pytest.raises(UnknownAgent):
        await writer.live.update("nobody", lambda a: a)
    assert not await writer.live.delete("nobody")
    assert await writer.live.delete("sales")
    await eventually(lambda: "sales" not in reader.ids(), "the delete on the other store")
    with pytest.raises(UnknownAgent):
        reader.get("sales")
    await asyncio.gather(writer.stop(), reader.stop(), late.stop())


async def test_a_bad_value_in_the_bucket_makes_that_agent_invalid_not_the_store(
    buses: list[Bus], agents_dir: Path
) -> None:
    store = await started(buses[0], agents_dir)
    kv = await buses[1].nc.jetstream().key_value(AGENTS_BUCKET)
    await kv.put("odd", b'{"name": "no greeting"}')
    await kv.put("garbage", b"\xff not json")
    await eventually(lambda: store.live is not None and "garbage" in store.live.invalid, "the bad values")
    for agent_id in ("odd", "garbage"):
        with pytest.raises(InvalidAgent):
            store.get(agent_id)
    assert store.get("demo").name  # the others still answer
    await store.stop()


async def test_the_brain_builds_the_prompt_of_the_calls_version(buses: list[Bus], agents_dir: Path) -> None:
    store = await started(buses[0], agents_dir)
    assert store.live is not None
    v1 = store.versioned("sales")[1]
    await store.live.update("sales", lambda a: msgspec.structs.replace(a, system_prompt="You sell other things."))
    prompts = PromptBuilder(store)

    def system(version: int) -> str:
        turn = BrainTurn(
            call_id="c1",
            turn_id=1,
            agent_id="sales",
            agent_version=version,
            history=[],
            user_text="hi",
            requested_at_us=0,
        )
        return str(prompts.messages(turn)[1][0]["content"])

    assert system(v1) == "You sell things."  # the call that started before the edit
    assert system(0) == "You sell other things."  # no version: the latest
    await store.stop()


async def test_a_store_not_started_reads_the_directory(agents_dir: Path) -> None:
    store = AgentStore(agents_dir)
    assert store.ids() == ["broken", "demo", "sales"]
    assert store.versioned("sales")[1] == 0
    with pytest.raises(InvalidAgent):
        store.get("broken")


def test_agent_writes_need_an_admin_key() -> None:
    from services.gateway.api_keys import required_scope

    assert required_scope("GET", "/v1/agents/demo") == "read"
    for method, path in (
        ("POST", "/v1/agents"),
        ("PUT", "/v1/agents/x"),
        ("PATCH", "/v1/agents/x"),
        ("DELETE", "/v1/agents/x"),
    ):
        assert required_scope(method, path) == "admin", (method, path)


async def test_if_match_lets_one_of_two_editors_of_a_version_win(buses: list[Bus], agents_dir: Path) -> None:
    """Two editors read version v, both write with If-Match v: the compare-and-set on the
    revision lets exactly one land, the other gets VersionMismatch naming the version now."""
    one, two = await started(buses[0], agents_dir), await started(buses[1], agents_dir)
    assert one.live is not None and two.live is not None
    _, v = one.versioned("sales")

    def greet(text: str) -> Callable[[Agent], Agent]:
        return lambda a: msgspec.structs.replace(a, greeting=text)

    outcomes = await asyncio.gather(
        one.live.update("sales", greet("From one."), if_match(f'"{v}"')),
        two.live.update("sales", greet("From two."), if_match(f'"{v}"')),
        return_exceptions=True,
    )
    won = [o for o in outcomes if not isinstance(o, BaseException)]
    lost = [o for o in outcomes if isinstance(o, VersionMismatch)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert (await history(buses[0], "sales"))[-2:] == [v, won[0].version]  # one write over v, no more
    with pytest.raises(VersionMismatch) as stale:
        await one.live.update("sales", greet("Late."), if_match(f'"{v}"'))
    assert stale.value.current == won[0].version
    # A stale delete deletes nothing; the current version's does.
    with pytest.raises(VersionMismatch):
        await two.live.delete("sales", if_match(f'"{v}"'))
    assert one.get("sales").greeting in ("From one.", "From two.")
    assert await two.live.delete("sales", if_match(f'W/"{v}", "{won[0].version}"'))
    await asyncio.gather(one.stop(), two.stop())


def test_if_match_names_versions_strongly() -> None:
    assert if_match(None) is None
    assert if_match("*")(1) and if_match(' "3" , "7"')(7) and if_match("7")(7)  # type: ignore[misc]
    for header, version in (('"7"', 8), ('W/"7"', 7), ("", 7), ("abc", 7), ('"-7"', -7), ('"7', 7)):
        assert not if_match(header)(version), header  # type: ignore[misc]
    assert etag(12) == '"12"'
