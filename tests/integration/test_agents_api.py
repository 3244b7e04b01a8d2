"""`/v1/agents` end to end over real sockets: one stack with two of every service (two
gateways behind the front door), agents in JetStream KV, simulated Twilio calls."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proto.messages import BrainTurn
from tests.integration.conftest import AUTH_TOKEN, own_stack, script_for, wait_until, watching
from voxline.devstack import DevStack
from voxline.simulator import CallResult, Utterance, run_call

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    with own_stack(tmp_path_factory, "agents", {"VOXLINE_BRAIN_TIMEOUT_S": "2"}, replicas=2) as s:
        yield s


def agent_doc(agent_id: str, greeting: str, **more: Any) -> dict[str, Any]:
    return {"id": agent_id, "name": f"Agent {agent_id}", "greeting": greeting, "system_prompt": "Be brief.", **more}


async def call(stack: DevStack, agent_id: str, *texts: str) -> CallResult:
    s = script_for(*(Utterance(text=t) for t in texts), agent_id=agent_id)
    result = await run_call(stack.gateway_url, s, auth_token=AUTH_TOKEN)
    assert result.accepted and not result.errors, result.errors
    assert result.record is not None
    return result


def greeting_of(result: CallResult) -> str:
    assert result.record is not None
    [greeting] = [t for t in result.record["turns"] if t["kind"] == "greeting"]
    return str(greeting["reply_text"])


async def test_a_created_agent_takes_calls_and_an_update_changes_the_next_call(stack: DevStack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_urls()[0]) as api:
        created = await api.post("/v1/agents", json=agent_doc("florist", "Welcome to the flower shop."))
        assert created.status_code == 201, created.text
        v1 = created.json()["version"]
        assert v1 > 0
        got = await api.get("/v1/agents/florist")
        assert got.status_code == 200
        assert got.json()["greeting"] == "Welcome to the flower shop." and got.json()["version"] == v1
        listed = (await api.get("/v1/agents")).json()["agents"]
        assert {"id": "florist", "name": "Agent florist", "version": v1} in listed
        assert any(a["id"] == "demo" for a in listed)  # seeded from the TOML directory

        first = await call(stack, "florist", "what are your opening hours")
        assert greeting_of(first) == "Welcome to the flower shop."
        assert first.record is not None and first.record["agent_version"] == v1

        patched = await api.patch("/v1/agents/florist", json={"greeting": "Hello, flowers here."})
        assert patched.status_code == 200, patched.text
        v2 = patched.json()["version"]
        assert v2 > v1 and patched.json()["name"] == "Agent florist"  # PATCH keeps the rest

    second = await call(stack, "florist", "what are your opening hours")
    assert greeting_of(second) == "Hello, flowers here."
    assert second.record is not None and second.record["agent_version"] == v2


async def test_an_edit_during_a_call_changes_only_later_calls(stack: DevStack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url) as api:
        created = await api.post("/v1/agents", json=agent_doc("baker", "Bakery, good morning."))
        v1 = created.json()["version"]
        edited: list[int] = []
        async with watching(stack.probe_url) as spy:

            async def asked() -> bool:
                return any(t.agent_id == "baker" for t in spy.of_type(BrainTurn))

            async def edit_after_the_first_question() -> None:
                await wait_until(asked, 30, "the first turn")
                seen = len([t for t in spy.of_type(BrainTurn) if t.agent_id == "baker"])
                reply = await api.patch("/v1/agents/baker", json={"greeting": "Bakery, changed."})
                assert reply.status_code == 200
                edited.extend([seen, reply.json()["version"]])

            editing = asyncio.create_task(edit_after_the_first_question())
            during = await call(stack, "baker", "do you have bread", "and cakes")
            await editing
            turns = [t for t in spy.of_type(BrainTurn) if t.agent_id == "baker"]
        seen_before_edit, v2 = edited
        # The second question was asked after the edit had been written, on the call's version.
        assert seen_before_edit == 1 and len(turns) == 2, [t.user_text for t in turns]
        assert [t.agent_version for t in turns] == [v1, v1]
        assert during.record is not None and during.record["agent_version"] == v1
        after = await call(stack, "baker", "do you have bread")
        assert greeting_of(after) == "Bakery, changed."
        assert after.record is not None and after.record["agent_version"] == v2


async def test_validation_names_the_field_and_conflicts_and_absences_are_told(stack: DevStack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_urls()[0]) as api:
        cases = [
            (agent_doc("bad1", 42), "greeting"),
            ({"id": "bad2", "name": "x", "greeting": "hi"}, "system_prompt"),
            (agent_doc("bad3", "hi", transfer_allowlist=["0900"]), "transfer_allowlist[0]"),
            (agent_doc("bad4", "hi", turn={"idle_hangup_s": "soon"}), "turn.idle_hangup_s"),
            (agent_doc("bad5", "hi", greting="typo"), "greting"),
            (agent_doc("Bad Id", "hi"), "id"),
            (agent_doc("bad6", "hi", knowledge=["../../etc/passwd"]), "knowledge"),
            (agent_doc("bad7", "hi", analysis={"fields": {"cb": {"type": "date"}}}), "analysis.fields.cb.type"),
            (agent_doc("bad8", "hi", analysis={"summary": False}), "analysis.summary"),
        ]
        for body, field in cases:
            reply = await api.post("/v1/agents", json=body)
            assert reply.status_code == 422, (body, reply.text)
            assert reply.json()["error"]["field"] == field, reply.json()
        assert (await api.get("/v1/agents/bad1")).status_code == 404  # nothing was stored

        assert (await api.post("/v1/agents", json=agent_doc("twice", "Hi."))).status_code == 201
        again = await api.post("/v1/agents", json=agent_doc("twice", "Hi again."))
        assert again.status_code == 409
        assert (await api.get("/v1/agents/twice")).json()["greeting"] == "Hi."
        bad_put = await api.put("/v1/agents/twice", json=agent_doc("twice", ["not", "text"]))
        assert bad_put.status_code == 422 and bad_put.json()["error"]["field"] == "greeting"

        assert (await api.get("/v1/agents/nobody")).status_code == 404
        assert (await api.put("/v1/agents/nobody", json=agent_doc("nobody", "Hi."))).status_code == 404
        assert (await api.patch("/v1/agents/nobody", json={"greeting": "Hi."})).status_code == 404
        assert (await api.delete("/v1/agents/nobody")).status_code == 404
        assert (await api.delete("/v1/agents/twice")).status_code == 204
        assert (await api.get("/v1/agents/twice")).status_code == 404
        assert (await api.delete("/v1/agents/twice")).status_code == 404


async def test_both_gateways_see_what_one_of_them_wrote(stack: DevStack) -> None:
    one, other = (httpx.AsyncClient(base_url=url) for url in stack.gateway_urls())
    async with one, other:

        async def seen_on_other(version: int | None) -> bool:
            reply = await other.get("/v1/agents/shared")
            return reply.json().get("version") == version if version else reply.status_code == 404

        created = await one.post("/v1/agents", json=agent_doc("shared", "Shared hello."))
        v1 = created.json()["version"]
        await wait_until(lambda: seen_on_other(v1), 10, "the agent on the other gateway")
        updated = await other.put("/v1/agents/shared", json=agent_doc("shared", "Shared again."))
        v2 = updated.json()["version"]
        assert v2 > v1

        async def seen_on_one() -> bool:
            return (await one.get("/v1/agents/shared")).json().get("greeting") == "Shared again."

        await wait_until(seen_on_one, 10, "the update on the first gateway")
        assert (await one.delete("/v1/agents/shared")).status_code == 204
        await wait_until(lambda: seen_on_other(None), 10, "the delete on the other gateway")


def voxline_agents(stack: DevStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voxline.cli", "agents", "--url", stack.gateway_url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "VOXLINE_API_KEY": ""},
    )


async def test_agents_apply_creates_updates_and_leaves_alone(stack: DevStack, tmp_path: Path) -> None:
    (tmp_path / "hotel.toml").write_text('name = "Hotel"\ngreeting = "Hotel, hello."\nsystem_prompt = "Rooms."\n')
    (tmp_path / "demo.toml").write_text((Path(__file__).parents[2] / "voxline/agents/demo.toml").read_text())
    first = voxline_agents(stack, "apply", "-f", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["agent/demo unchanged", "agent/hotel created"]
    (tmp_path / "hotel.toml").write_text('name = "Hotel"\ngreeting = "Hotel, welcome."\nsystem_prompt = "Rooms."\n')
    second = voxline_agents(stack, "apply", "-f", str(tmp_path))
    assert second.stdout.splitlines() == ["agent/demo unchanged", "agent/hotel updated"], second.stderr
    got = voxline_agents(stack, "get", "hotel")
    assert '"greeting": "Hotel, welcome."' in got.stdout
    assert "hotel" in voxline_agents(stack, "list").stdout
    assert voxline_agents(stack, "delete", "hotel").stdout.strip() == "agent/hotel deleted"
    gone = voxline_agents(stack, "get", "hotel")
    assert gone.returncode == 1 and "no agent 'hotel'" in gone.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.toml").write_text('name = "Bad"\ngreeting = 1\nsystem_prompt = "x"\n')
    refused = voxline_agents(stack, "apply", "-f", str(broken))
    assert refused.returncode == 1 and "field greeting" in refused.stderr


async def test_openapi_documents_the_agent_routes(stack: DevStack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url) as api:
        doc = (await api.get("/openapi.json")).json()
    create = doc["paths"]["/v1/agents"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Agent"}
    assert {"201", "409", "422"} <= set(create["responses"])
    assert {"greeting", "system_prompt", "turn"} <= set(doc["components"]["schemas"]["Agent"]["properties"])
    item = doc["paths"]["/v1/agents/{agent_id}"]
    assert {"get", "put", "patch", "delete"} <= set(item)
    assert "404" in item["delete"]["responses"] and "422" in item["patch"]["responses"]
    for method in ("put", "patch", "delete"):
        assert "412" in item[method]["responses"], method
        assert [p["name"] for p in item[method].get("parameters", []) if p["in"] == "header"] == ["If-Match"]
    assert "default_variables" in doc["components"]["schemas"]["Agent"]["properties"]
    outbound = doc["components"]["schemas"]["OutboundCall"]["properties"]["variables"]
    assert "{{name}}" in outbound["description"], outbound


async def test_concurrent_edits_with_if_match_one_wins_the_stale_one_gets_412(stack: DevStack) -> None:
    """Two editors on the two gateways read version v (its ETag) and both PATCH with
    If-Match: exactly one lands; the other is a 412 in the one error shape, with the current
    ETag. A stale DELETE deletes nothing; without If-Match the last write wins as before."""
    one_url, two_url = stack.gateway_urls()[:2]
    async with httpx.AsyncClient(base_url=one_url) as one, httpx.AsyncClient(base_url=two_url) as two:
        created = await one.post("/v1/agents", json=agent_doc("editors", "Version one."))
        assert created.status_code == 201 and created.headers["etag"] == f'"{created.json()["version"]}"'
        got = await two.get("/v1/agents/editors")
        tag = got.headers["etag"]
        assert tag == f'"{got.json()["version"]}"'
        answers = await asyncio.gather(
            one.patch("/v1/agents/editors", json={"greeting": "From one."}, headers={"If-Match": tag}),
            two.patch("/v1/agents/editors", json={"greeting": "From two."}, headers={"If-Match": tag}),
        )
        assert sorted(a.status_code for a in answers) == [200, 412], [a.text for a in answers]
        won, lost = sorted(answers, key=lambda a: a.status_code)
        error = lost.json()["error"]
        assert error["type"] == "precondition_failed" and error["current_version"] == won.json()["version"], error
        assert lost.headers["etag"] == won.headers["etag"] == f'"{won.json()["version"]}"'
        assert (await one.get("/v1/agents/editors")).json()["greeting"] == won.json()["greeting"]

        stale_put = await two.put("/v1/agents/editors", json=agent_doc("editors", "Stale."), headers={"If-Match": tag})
        stale_delete = await one.delete("/v1/agents/editors", headers={"If-Match": tag})
        assert (stale_put.status_code, stale_delete.status_code) == (412, 412)
        current = won.headers["etag"]
        put = await two.put("/v1/agents/editors", json=agent_doc("editors", "Fresh."), headers={"If-Match": current})
        assert put.status_code == 200 and put.headers["etag"] != current
        assert (await one.patch("/v1/agents/editors", json={"greeting": "No condition."})).status_code == 200
        assert (await one.delete("/v1/agents/editors", headers={"If-Match": "*"})).status_code == 204


async def test_deleting_an_agent_deletes_its_knowledge_documents(stack: DevStack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_urls()[0]) as api:
        assert (await api.post("/v1/agents", json=agent_doc("shortlived", "Hi."))).status_code == 201
        for name in ("a.txt", "b.md"):
            headers = {"Content-Type": "text/plain" if name.endswith("txt") else "text/markdown"}
            upload = await api.put(f"/v1/agents/shortlived/knowledge/{name}", content=b"Open at nine.", headers=headers)
            assert upload.status_code == 201, upload.text
        assert len((await api.get("/v1/agents/shortlived/knowledge")).json()["documents"]) == 2
        assert (await api.delete("/v1/agents/shortlived")).status_code == 204
        # The same id again: the old agent's documents are gone, not inherited.
        assert (await api.post("/v1/agents", json=agent_doc("shortlived", "Hi again."))).status_code == 201
        assert (await api.get("/v1/agents/shortlived/knowledge")).json()["documents"] == []


async def test_voxline_call_with_vars_hears_them_in_the_greeting(stack: DevStack, tmp_path: Path) -> None:
    """`voxline call --var` (the simulator, run as the CLI is): the voice URL carries the
    variables as POST /v1/calls puts them; the greeting says the value, the agent's default
    fills what the call does not give, and the record has the call's own."""
    doc = agent_doc("greeter", "Hello {{customer_name}}, welcome to {{shop}}.{{nothing}}")
    doc["default_variables"] = {"shop": "the bakery", "customer_name": "there"}
    async with httpx.AsyncClient(base_url=stack.gateway_urls()[0]) as api:
        assert (await api.post("/v1/agents", json=doc)).status_code == 201
    args = ["--url", stack.gateway_url, "--agent", "greeter", "--var", "customer_name=Ada", "--say", "hi"]
    args += ["--auth-token", AUTH_TOKEN, "--voice", "espeak", "--json", str(tmp_path / "result.json")]
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voxline.cli", "call", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(cli.communicate(), 120)
    assert cli.returncode == 0, (out.decode()[-2000:], err.decode()[-2000:])
    sid = re.findall(r"CA[0-9a-f]{32}", (tmp_path / "result.json").read_text())[0]
    async with httpx.AsyncClient(base_url=stack.gateway_url) as api:
        record = (await api.get(f"/v1/calls/{sid}")).json()
    [greeting] = [t for t in record["turns"] if t["kind"] == "greeting"]
    assert greeting["reply_text"] == "Hello Ada, welcome to the bakery.", greeting
    assert record["variables"] == {"customer_name": "Ada"}
