"""`/v1/agents/{id}/knowledge`: an agent's knowledge documents, uploaded as they are.

- `PUT /v1/agents/{id}/knowledge/{name}`: the raw document as the body, its type as
  `Content-Type`; 201 (200 when it replaced one) and the document's entry.
- `GET /v1/agents/{id}/knowledge`: `{"documents": [{"name", "content_type", "bytes",
  "characters", "chunks", "uploaded_at"}]}`, by name.
- `DELETE /v1/agents/{id}/knowledge/{name}`: 204.

The text is extracted at upload (voxline/agents/extract.py) and only the text is stored, in
the JetStream object store (`proto.knowledge.KNOWLEDGE_BUCKET`, voxline/agents/documents.py);
every brain follows the bucket, so the agent's next turn retrieves from it. A type other than
text/plain, text/markdown, text/html or application/pdf is a 415; a document without text
(a broken PDF, a scan, bytes that are not UTF-8) a 422 that says why; a body over
`VOXLINE_KNOWLEDGE_MAX_BYTES` a 413, refused before it is all read; an unknown agent a 404.
A name is 1 to 128 letters, digits, `.`, `_`, `-`, starting with a letter or a digit.
Writes need an `admin` key (services/gateway/api_keys.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from nats.js.object_store import ObjectStore

from proto.knowledge import DOCUMENT_NAME, DOCUMENT_TYPES, KnowledgeDocument
from services.gateway.api_errors import ErrorResponse, error
from voxline.agents import AgentStore, InvalidAgent, UnknownAgent
from voxline.agents.documents import agent_documents, delete_document, exists, open_bucket, put_document
from voxline.agents.extract import UnreadableDocument, extract
from voxline.agents.knowledge import chunk_document
from voxline.bus import Bus

log = logging.getLogger("voxline.gateway.knowledge")

NAME_HELP = "1 to 128 letters, digits, '.', '_' and '-', starting with a letter or a digit"
_EXAMPLE = {
    "name": "prices.md",
    "content_type": "text/markdown",
    "bytes": 2140,
    "characters": 2102,
    "chunks": 6,
    "uploaded_at": "2026-12-04T06:30:00.000Z",
}
_DOCUMENT_SCHEMA = msgspec.json.schema(KnowledgeDocument)
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "The document itself, with its type as Content-Type.",
        "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in DOCUMENT_TYPES},
    }
}


def _errors(*codes: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    common = ((401, "Missing, unknown or revoked API key."), (403, "The key lacks the scope (writes need admin)."))
    return {code: {"model": ErrorResponse, "description": why} for code, why in (*common, *codes)}


def _document(description: str) -> dict[str, Any]:
    content = {"application/json": {"schema": _DOCUMENT_SCHEMA, "example": _EXAMPLE}}
    return {"description": description, "content": content}


_NO_AGENT = (404, "No such agent (or, for DELETE, no such document).")
_STORE_DOWN = (503, "The knowledge store (NATS) is not reachable.")


def _media_type(request: Request) -> tuple[str, str]:
    """(media type, charset) of the request's Content-Type."""
    kind, _, params = request.headers.get("content-type", "").partition(";")
    charset = ""
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "charset":
            charset = value.strip().strip('"')
    return kind.strip().lower(), charset


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None once it passes `limit` (the rest is not read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            return None
    return bytes(body)


def install(app: FastAPI, bus: Bus, agents: AgentStore, max_bytes: int) -> None:
    bucket: list[ObjectStore] = []  # opened on first use: the gateway may start before NATS has JetStream ready

    async def store() -> ObjectStore:
        if not bucket:
            bucket.append(await open_bucket(bus))
        return bucket[0]

    def unknown_agent(agent_id: str) -> JSONResponse | None:
        try:
            agents.versioned(agent_id)
        except (UnknownAgent, InvalidAgent) as exc:
            return error(404, str(exc))
        return None

    def bad_name(name: str) -> JSONResponse | None:
        if DOCUMENT_NAME.fullmatch(name):
            return None
        return error(422, f"document name {name[:64]!r} is not {NAME_HELP}", field="name")

    @app.put(
        "/v1/agents/{agent_id}/knowledge/{name}",
        tags=["knowledge"],
        summary="Upload (or replace) a knowledge document",
        status_code=201,
        openapi_extra=_UPLOAD_BODY,
        responses={
            201: _document("The document, stored and indexed for the agent's next turns."),
            200: _document("The document, replacing the one of the same name."),
            **_errors(
                _NO_AGENT,
                (413, "Over VOXLINE_KNOWLEDGE_MAX_BYTES (10 MiB by default)."),
                (415, "Not text/plain, text/markdown, text/html or application/pdf."),
                (422, "No text could be had from it (the message says why), or a bad name."),
                _STORE_DOWN,
            ),
        },
    )
    async def put_knowledge(agent_id: str, name: str, request: Request) -> JSONResponse:
        if (refused := unknown_agent(agent_id) or bad_name(name)) is not None:
            return refused
        content_type, charset = _media_type(request)
        if content_type not in DOCUMENT_TYPES:
            shown = content_type[:80] or "none"
            return error(415, f"Content-Type {shown!r} is not one of {', '.join(DOCUMENT_TYPES)}")
        data = await _read_capped(request, max_bytes)
        if data is None:
            return error(413, f"a knowledge document is at most {max_bytes} bytes")
        try:
            text, kind = await asyncio.to_thread(extract, data, content_type, charset)
        except UnreadableDocument as exc:
            return error(422, f"{name}: {exc}", field="body")
        if len(text) > max_bytes:
            return error(422, f"{name}: its text is over {max_bytes} characters", field="body")
        chunks = len(await asyncio.to_thread(chunk_document, text, name, kind))
        try:
            objects = await store()
            replaced = await exists(objects, agent_id, name)
            document = await put_document(objects, agent_id, name, text, content_type, kind, len(data), chunks)
        except Exception as exc:
            log.error("knowledge %s/%s not stored: %s: %s", agent_id, name, type(exc).__name__, exc)
            return error(503, "the knowledge store is not reachable (NATS); try again")
        log.info("knowledge %s/%s stored: %d chars, %d chunks", agent_id, name, len(text), chunks)
        return JSONResponse(msgspec.to_builtins(document), status_code=200 if replaced else 201)

    @app.get(
        "/v1/agents/{agent_id}/knowledge",
        tags=["knowledge"],
        summary="List an agent's knowledge documents",
        responses={
            200: {
                "description": "The documents, by name.",
                "content": {"application/json": {"example": {"documents": [_EXAMPLE]}}},
            },
            **_errors(_NO_AGENT, _STORE_DOWN),
        },
    )
    async def list_knowledge(agent_id: str) -> JSONResponse:
        if (refused := unknown_agent(agent_id)) is not None:
            return refused
        try:
            await store()
            documents = await agent_documents(bus, agent_id)
        except Exception as exc:
            log.error("knowledge of %s not listed: %s: %s", agent_id, type(exc).__name__, exc)
            return error(503, "the knowledge store is not reachable (NATS); try again")
        return JSONResponse({"documents": msgspec.to_builtins(documents)})

    @app.delete(
        "/v1/agents/{agent_id}/knowledge/{name}",
        tags=["knowledge"],
        summary="Delete a knowledge document (the agent's next turns no longer find it)",
        status_code=204,
        responses=_errors(_NO_AGENT, (422, "A bad name."), _STORE_DOWN),
    )
    async def delete_knowledge(agent_id: str, name: str) -> Response:
        if (refused := unknown_agent(agent_id) or bad_name(name)) is not None:
            return refused
        try:
            deleted = await delete_document(await store(), agent_id, name)
        except Exception as exc:
            log.error("knowledge %s/%s not deleted: %s: %s", agent_id, name, type(exc).__name__, exc)
            return error(503, "the knowledge store is not reachable (NATS); try again")
        if not deleted:
            return error(404, f"agent {agent_id} has no knowledge document {name!r}")
        log.info("knowledge %s/%s deleted", agent_id, name)
        return Response(status_code=204)
