"""Knowledge upload through the API, end to end over real sockets: one stack of its own
(nats-server, the five services), the brain on the OpenAI provider talking to the
chat-completions emulator, which keeps every request: what a document says must reach the
prompt of the turn that asks for it, passage for passage, and leave it once deleted.

The README's quickstart runs literally (bash, curl, `voxline call`), with only the host put in;
its call's record then gets the post-call analysis its agent asks for."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from proto.knowledge import KNOWLEDGE_BUCKET
from tests.cloud.conftest import counter_value, metrics, running
from tests.emulators.openai_chat import DEFAULT_KEY, OpenAiChatEmulator, Reply
from tests.integration.conftest import AUTH_TOKEN, own_stack, script_for, wait_until
from tests.integration.test_call_events import collect
from tests.unit.pdf_maker import make_pdf
from voxline.devstack import DevStack
from voxline.simulator import Utterance, run_call

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MAX_BYTES = 64 * 1024
WHITENING = "How much is teeth whitening?"
# What prices.md of the README says, as the chunker cuts it (its headings, then the paragraph).
WHITENING_PASSAGE = "Prices > Whitening\nTeeth whitening at Smile Dental costs 349 dollars and takes one hour."
HTML = b"""<html><head><style>h2 { color: teal }</style><script>track()</script></head><body>
<h1>Visiting</h1><h2>Parking</h2><p>Park for free in the blue garage on Elm Street, level minus two.</p>
</body></html>"""
PARKING = "Where can I park my car?"
PARKING_PASSAGE = "Visiting > Parking\nPark for free in the blue garage on Elm Street, level minus two."
PDF_LINE = "Emergency appointments are kept free every weekday at 7:30 in the morning."
EMERGENCY = "Do you have emergency appointments?"


@pytest.fixture(scope="module")
def chat() -> Iterator[OpenAiChatEmulator]:
    yield from running(OpenAiChatEmulator())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, chat: OpenAiChatEmulator) -> Iterator[DevStack]:
    env = {
        "VOXLINE_BRAIN_PROVIDER": "openai",
        "VOXLINE_OPENAI_API_KEY": DEFAULT_KEY,
        "VOXLINE_OPENAI_BASE_URL": chat.base_url,
        "VOXLINE_OPENAI_TIMEOUT_S": "2.0",
        "VOXLINE_KNOWLEDGE_MAX_BYTES": str(MAX_BYTES),
    }
    with own_stack(tmp_path_factory, "knowledge", env) as s:
        yield s


@pytest.fixture
async def api(stack: DevStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        yield client


async def brain_has_every_change(stack: DevStack) -> None:
    """Until the brain has applied the bucket's last change (its gauge of the stream
    sequence it applied): the next turn then retrieves from what the store holds now."""
    nc = await nats.connect(stack.probe_url)
    try:
        last = (await nc.jetstream().stream_info(f"OBJ_{KNOWLEDGE_BUCKET}")).state.last_seq
    finally:
        await nc.close()

    async def caught_up() -> bool:
        return counter_value(await metrics(stack, "brain"), "voxline_knowledge_applied_seq") >= last

    await wait_until(caught_up, 15, f"the brain to apply knowledge change {last}")


def readme_block(holding: str) -> str:
    """The README's one ```sh block that holds `holding`."""
    blocks = re.findall(r"^```sh\n(.*?)^```$", README.read_text(), re.M | re.S)
    [block] = [b for b in blocks if holding in b]
    return str(block)


async def smile_agent(api: httpx.AsyncClient) -> None:
    """The quickstart's agent, for a test run on its own (the quickstart test creates it)."""
    doc = {"id": "smile", "name": "Smile Dental", "greeting": "Hi.", "system_prompt": "You are the receptionist."}
    created = await api.post("/v1/agents", json=doc)
    assert created.status_code in (201, 409), created.text


async def run_readme(block: str, stack: DevStack, cwd: Path) -> str:
    script = block.replace("https://HOST", stack.gateway_url)
    env = {
        **os.environ,
        "VOXLINE_API_KEY": "",  # as under `make run`: /v1 is open on loopback until a key exists
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "VOXLINE_CALLER_VOICE": "espeak",  # the fake STT reads its script; the voice only has to be cheap
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = await asyncio.create_subprocess_exec(
        "bash", "-euo", "pipefail", "-c", script, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, (out.decode(), err.decode())
    return out.decode()


async def ask(stack: DevStack, chat: OpenAiChatEmulator, *questions: str) -> dict[str, list[str]]:
    """Place a call asking `questions`; per question, the knowledge passages of every chat
    request made for it (a preemptive request asks with the same words)."""
    before = len(chat.requests)
    script = script_for(*(Utterance(text=q) for q in questions), agent_id="smile")
    result = await run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN)
    assert result.accepted and not result.errors, (result.errors, result.notes)
    return {q: passages_for(chat.requests[before:], q) for q in questions}


def passages_for(requests: list[Any], question: str) -> list[str]:
    asked = [r for r in requests if r.messages and r.messages[-1] == {"role": "user", "content": question}]
    assert asked, f"no chat request asked {question!r}"
    passages: list[str] = []
    for request in asked:
        _, _, knowledge = request.system.partition("Relevant knowledge")
        passages += knowledge.split("\n", 1)[1].split("\n\n") if knowledge else []
    return passages


async def test_the_readme_quickstart_puts_the_documents_passage_into_the_prompt(
    stack: DevStack, chat: OpenAiChatEmulator, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    await run_readme(readme_block("/v1/agents/smile/knowledge/prices.md"), stack, tmp_path)
    listed = [d for d in (await api.get("/v1/agents/smile/knowledge")).json()["documents"] if d["name"] == "prices.md"]
    assert [(d["content_type"], d["chunks"]) for d in listed] == [("text/markdown", 1)]
    assert listed[0]["bytes"] == (tmp_path / "prices.md").stat().st_size
    assert listed[0]["characters"] == len((tmp_path / "prices.md").read_text().strip())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", listed[0]["uploaded_at"])

    await brain_has_every_change(stack)
    chat.answers = {"how much is teeth whitening": Reply("Whitening is 349 dollars.")}
    before = len(chat.requests)
    out = await run_readme(readme_block("voxline call --url"), stack, tmp_path)
    assert "Whitening is 349 dollars." in out, out
    asked = chat.requests[before:]
    assert WHITENING_PASSAGE in passages_for(asked, WHITENING)
    assert asked[-1].system.startswith("You are the receptionist of Smile Dental. Answer in one short sentence.")

    # The record, then its post-call analysis: the OpenAI brain's one completion under the
    # strict schema of the quickstart agent's `analysis` (the emulator answers from the schema).
    [call] = (await api.get("/v1/calls", params={"agent_id": "smile", "limit": 1})).json()["calls"]

    async def analysed() -> bool:
        record = (await api.get(f"/v1/calls/{call['call_id']}")).json()
        return (record.get("analysis") or {}).get("status") not in (None, "pending")

    await wait_until(analysed, 15, "the post-call analysis")
    analysis = (await api.get(f"/v1/calls/{call['call_id']}")).json()["analysis"]
    assert (analysis["status"], analysis["provider"], analysis["error"]) == ("done", "openai", "")
    assert analysis["summary"] == "emulated summary" and analysis["fields"] == {"wants_appointment": True}
    read = [r for r in chat.structured if f"Caller: {WHITENING}" in r.messages[-1]["content"]]
    assert [r.status for r in read] == [200], "one structured request, the schema accepted as strict"


async def test_html_and_pdf_uploads_reach_the_turns_that_ask_for_them(
    stack: DevStack, chat: OpenAiChatEmulator, api: httpx.AsyncClient
) -> None:
    await smile_agent(api)
    html = await api.put(
        "/v1/agents/smile/knowledge/visiting.html", content=HTML, headers={"Content-Type": "text/html"}
    )
    assert html.status_code in (200, 201), html.text
    pdf = make_pdf(["Our promise:", PDF_LINE])
    put = await api.put(
        "/v1/agents/smile/knowledge/hours.pdf", content=pdf, headers={"Content-Type": "application/pdf"}
    )
    assert put.status_code in (200, 201), put.text
    assert put.json()["characters"] == len("Our promise:\n" + PDF_LINE) and put.json()["bytes"] == len(pdf)
    await brain_has_every_change(stack)

    heard = await ask(stack, chat, PARKING, EMERGENCY)
    assert PARKING_PASSAGE in heard[PARKING]
    assert "Our promise:\n" + PDF_LINE in heard[EMERGENCY]
    assert not any("track()" in p or "teal" in p for p in heard[PARKING])  # script and style stay out


async def test_a_replaced_document_answers_and_a_deleted_one_is_gone_from_the_next_call(
    stack: DevStack, chat: OpenAiChatEmulator, api: httpx.AsyncClient
) -> None:
    await smile_agent(api)
    markdown = {"Content-Type": "text/markdown"}
    first = "# Prices\n\n## Whitening\nTeeth whitening at Smile Dental costs 299 dollars this month.\n"
    await api.put("/v1/agents/smile/knowledge/prices.md", content=first.encode(), headers=markdown)
    newer = "# Prices\n\n## Whitening\nTeeth whitening at Smile Dental costs 399 dollars from January.\n"
    replaced = await api.put("/v1/agents/smile/knowledge/prices.md", content=newer.encode(), headers=markdown)
    assert replaced.status_code == 200, replaced.text  # a replacement, not a creation
    await brain_has_every_change(stack)
    passages = (await ask(stack, chat, WHITENING))[WHITENING]
    assert "Prices > Whitening\nTeeth whitening at Smile Dental costs 399 dollars from January." in passages
    assert not any("299" in p for p in passages)

    deleted = await api.delete("/v1/agents/smile/knowledge/prices.md")
    assert deleted.status_code == 204, deleted.text
    names = [d["name"] for d in (await api.get("/v1/agents/smile/knowledge")).json()["documents"]]
    assert "prices.md" not in names
    await brain_has_every_change(stack)
    passages = (await ask(stack, chat, WHITENING))[WHITENING]
    assert not any("whitening" in p.lower() for p in passages), passages
    again = await api.delete("/v1/agents/smile/knowledge/prices.md")
    assert again.status_code == 404 and again.json()["error"]["type"] == "not_found"


def assert_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["type"] == kind, body
    return str(body["message"])


async def test_refusals_say_why(stack: DevStack, api: httpx.AsyncClient) -> None:
    await smile_agent(api)
    url = "/v1/agents/smile/knowledge"
    too_big = b"a" * (MAX_BYTES + 1)
    message = assert_error(
        await api.put(f"{url}/big.txt", content=too_big, headers={"Content-Type": "text/plain"}),
        413,
        "payload_too_large",
    )
    assert str(MAX_BYTES) in message
    broken = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n%%EOF\n"
    message = assert_error(
        await api.put(f"{url}/broken.pdf", content=broken, headers={"Content-Type": "application/pdf"}),
        422,
        "validation_error",
    )
    assert message.startswith("broken.pdf: not a readable PDF"), message
    scan = make_pdf([])
    message = assert_error(
        await api.put(f"{url}/scan.pdf", content=scan, headers={"Content-Type": "application/pdf"}),
        422,
        "validation_error",
    )
    assert "no text layer" in message
    assert_error(
        await api.put("/v1/agents/nobody/knowledge/a.md", content=b"# A", headers={"Content-Type": "text/markdown"}),
        404,
        "not_found",
    )
    assert_error(await api.get("/v1/agents/nobody/knowledge"), 404, "not_found")
    assert_error(
        await api.put(f"{url}/a.doc", content=b"x", headers={"Content-Type": "application/msword"}),
        415,
        "unsupported_media_type",
    )
    bad_name = await api.put(f"{url}/.hidden", content=b"x", headers={"Content-Type": "text/plain"})
    assert_error(bad_name, 422, "validation_error")
    assert bad_name.json()["error"]["field"] == "name"
    names = [d["name"] for d in (await api.get(url)).json()["documents"]]
    assert not {"big.txt", "broken.pdf", "scan.pdf", "a.doc", ".hidden"} & set(names)


async def test_a_model_answer_outside_the_analysis_schema_fails_the_analysis_and_call_ended_still_comes(
    stack: DevStack, chat: OpenAiChatEmulator, api: httpx.AsyncClient
) -> None:
    doc = {
        "id": "analysed",
        "name": "Analysed",
        "greeting": "Hi.",
        "system_prompt": "You are the receptionist.",
        "analysis": {"fields": {"wants_appointment": {"type": "boolean"}}},
    }
    assert (await api.post("/v1/agents", json=doc)).status_code in (201, 409)
    chat.structured_answers = ['{"summary": "The caller asked", "wants_appo']  # cut mid-JSON
    script = script_for(Utterance(text=WHITENING), agent_id="analysed")
    result = await run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN)
    assert result.accepted and not result.errors, result.errors
    # The SSE stream of the ended call ends with call.ended once the analysis failed.
    events = await collect(api, script.call_sid or "")
    assert events[-1].event == "call.ended"
    analysis = events[-1].data["record"]["analysis"]
    assert analysis["status"] == "failed" and analysis["provider"] == "openai", analysis
    assert analysis["error"] == "the model's answer is outside the schema: the answer is not JSON"
    assert analysis["summary"] == "" and analysis["fields"] == {}
    assert (await api.get(f"/v1/calls/{script.call_sid}")).json()["analysis"] == analysis


async def test_the_readmes_if_match_example_edits_the_agent_and_a_stale_tag_is_refused(
    stack: DevStack, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The README's ETag/If-Match block, run literally: it reads the agent's ETag and PATCHes
    with it; the version it read is stale afterwards, and a PATCH with it is a 412."""
    await smile_agent(api)
    before = (await api.get("/v1/agents/smile")).json()
    await run_readme(readme_block("If-Match: $ETAG"), stack, tmp_path)
    after = await api.get("/v1/agents/smile")
    assert after.json()["greeting"] == "Smile Dental, good morning!" and after.json()["version"] > before["version"]
    stale = await api.patch(
        "/v1/agents/smile", json={"greeting": before["greeting"]}, headers={"If-Match": f'"{before["version"]}"'}
    )
    assert stale.status_code == 412 and stale.headers["etag"] == after.headers["etag"], stale.text
    restored = await api.patch("/v1/agents/smile", json={"greeting": before["greeting"]})
    assert restored.status_code == 200
