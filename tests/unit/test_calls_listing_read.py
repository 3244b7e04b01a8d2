"""How GET /v1/calls reads the records bucket, against a real nats-server: a listing taken
while calls are being written has every call that existed before it, each once, at its
latest value; deleted and unreadable records are left out."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

from proto.records import CallRecord
from services.gateway.calls_api import read_summaries
from voxline.bus import Bus


def record(call_id: str, status: str = "in-progress") -> CallRecord:
    return CallRecord(call_id=call_id, call_sid=call_id, agent_id="demo", status=status, started_at_us=1)  # type: ignore[arg-type]


async def test_a_listing_during_writes_has_each_call_once_at_its_latest(worker_bus: Bus) -> None:
    bucket = f"calls_listing_{uuid.uuid4().hex[:8]}"
    await worker_bus.create_bucket(bucket, ttl_s=300)
    ids = [f"CA{n:032x}" for n in range(300)]
    await asyncio.gather(*(worker_bus.kv_put(bucket, i, record(i)) for i in ids))
    stop = asyncio.Event()

    async def calls_go_on() -> None:  # every call updated again and again, as turns land
        n = 0
        while not stop.is_set():
            await asyncio.gather(*(worker_bus.kv_put(bucket, i, record(i)) for i in ids[n % 10 :: 10]))
            n += 1

    writer = asyncio.create_task(calls_go_on())
    try:
        for _ in range(15):
            calls, stored = await read_summaries(worker_bus, bucket)
            listed = [c.call_id for c in calls]
            assert len(listed) == len(set(listed)), "a call updated during the read came twice"
            assert set(listed) == set(ids) == set(stored)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await writer


async def test_deleted_and_unreadable_records_are_left_out(worker_bus: Bus, caplog: pytest.LogCaptureFixture) -> None:
    bucket = f"calls_listing_{uuid.uuid4().hex[:8]}"
    await worker_bus.create_bucket(bucket, ttl_s=300)
    assert await read_summaries(worker_bus, bucket) == ([], {})
    await worker_bus.kv_put(bucket, "CAkept", record("CAkept"))
    await worker_bus.kv_put(bucket, "CAgone", record("CAgone"))
    await worker_bus.kv_delete(bucket, "CAgone")
    await worker_bus.kv_put_bytes(bucket, "CAbroken", b'{"call_id": "CAbroken"}')
    await worker_bus.kv_put(bucket, "CAother", record("CAsomeone-else"))  # not the key's call
    calls, stored = await read_summaries(worker_bus, bucket)
    assert [c.call_id for c in calls] == ["CAkept"] and list(stored) == ["CAkept"]
    assert "2 call records do not match the contract" in caplog.text
    assert await read_summaries(worker_bus, "no_such_bucket") == ([], {})
