"""`GET /v1/calls/{id}/events` over real sockets: a simulated call through the suite's stack,
its server-sent events read by a client as the call goes on, and a client reconnecting with
Last-Event-ID after the call ended."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.integration.conftest import AUTH_TOKEN, script_for, wait_until
from voxline.devstack import DevStack
from voxline.simulator import Utterance, run_call

pytestmark = pytest.mark.integration

QUESTION = "what are your opening hours"


@dataclass
class Event:
    event: str
    data: dict[str, Any]
    id: str = ""
    comments: list[str] = field(default_factory=list)


async def read_events(lines: AsyncIterator[str]) -> AsyncIterator[Event]:
    """The SSE wire format as a browser's EventSource reads it: fields until a blank line."""
    current: dict[str, str] = {}
    async for line in lines:
        if line == "":
            if "event" in current:
                yield Event(current["event"], json.loads(current.get("data", "{}")), current.get("id", ""))
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            current[name] = value.removeprefix(" ")


async def collect(http: httpx.AsyncClient, call_sid: str, last_event_id: str = "") -> list[Event]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    async with http.stream("GET", f"/v1/calls/{call_sid}/events", headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [e async for e in read_events(response.aiter_lines())]  # ends after call.ended


@pytest.fixture
async def http(stack: DevStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=httpx.Timeout(10.0, read=60.0)) as client:
        yield client


async def test_a_call_streams_live_and_a_reconnect_gets_what_came_after(
    stack: DevStack, http: httpx.AsyncClient
) -> None:
    call_sid = "CA" + uuid.uuid4().hex
    script = script_for(Utterance(text=QUESTION), call_sid=call_sid)
    call = asyncio.create_task(run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN))

    async def started() -> bool:
        return (await http.get(f"/v1/calls/{call_sid}")).status_code == 200

    await wait_until(started, 15.0, "the call's record")
    events = await collect(http, call_sid)
    result = await call
    assert result.accepted and not result.errors, result.errors

    kinds = [e.event for e in events]
    assert kinds[0] == "call.started" and kinds[-1] == "call.ended", kinds
    assert kinds.count("call.ended") == 1
    # Live, before the final: the caller's speech and the fake recogniser's first-word guess.
    partial = next(i for i, e in enumerate(events) if e.event == "transcript.partial")
    assert events[partial].data["text"] == "what"
    assert "speech.started" in kinds[:partial]
    finals = [(i, e.data) for i, e in enumerate(events) if e.event == "transcript.final"]
    caller = next(i for i, d in finals if d["speaker"] == "caller" and d["text"] == QUESTION)
    assert partial < caller
    agent = next(i for i, d in finals if d["speaker"] == "agent" and d["turn_id"] == events[caller].data["turn_id"])
    turn = next(e for e in events[agent:] if e.event == "turn.ended")
    assert turn.data["turn_id"] == events[caller].data["turn_id"] and not turn.data["interrupted"]
    assert turn.data["latency_ms"], "the turn's per-stage latency is in the event"
    # The lines are the record's, the agent's as said.
    record = result.record or {}
    reply = next(t for t in record["turns"] if t.get("caller_text") == QUESTION)
    assert events[agent].data["text"] == reply["reply_text"]
    assert events[-1].data["record"]["turns"] == record["turns"]
    # call.ended waited for the demo agent's post-call analysis (the fake brain's) and carries it.
    analysis = events[-1].data["record"]["analysis"]
    assert (analysis["status"], analysis["provider"]) == ("done", "fake"), analysis
    ids = [e.id for e in events if e.id]
    assert len(ids) == len(set(ids)) == len([e for e in events if not e.event.startswith(("speech.", "transcript.p"))])

    # A client that lost the stream at the caller's line gets everything after it, once.
    again = await collect(http, call_sid, last_event_id=events[caller].id)
    assert [e.id for e in again] == [e.id for e in events[caller + 1 :] if e.id]


async def test_an_unknown_call_is_404_and_a_bad_id_400(http: httpx.AsyncClient) -> None:
    missing = await http.get(f"/v1/calls/CA{uuid.uuid4().hex}/events")
    assert missing.status_code == 404
    assert "error" in missing.json(), missing.text
    assert (await http.get("/v1/calls/CA-not-an-id/events")).status_code == 400
