"""`/v1/agents`: create, list, read, update and delete agents, kept in JetStream KV
(voxline/agents/live.py) where every service watches them.

| method | path | answer |
|---|---|---|
| POST | `/v1/agents` | 201 and the agent; 409 when the id exists |
| GET | `/v1/agents` | `{"agents": [{"id", "name", "version"}]}` |
| GET | `/v1/agents/{id}` | the agent |
| PUT | `/v1/agents/{id}` | replaces every field (the ones left out take their defaults) |
| PATCH | `/v1/agents/{id}` | changes the fields given |
| DELETE | `/v1/agents/{id}` | 204; its knowledge documents are deleted with it |

An agent is its fields (voxline/agents/__init__.py) plus `version`, which grows on every
write; a call records the version it ran (`agent_version`), and an edit changes only the
calls that start after it. A body that is not an agent is a 422 naming the field
(`{"error": {"message", "field"}}`); an unknown id a 404. Writes need an `admin` key
(services/gateway/api_keys.py: every write but `POST /v1/calls`).

Concurrent edits (services/gateway/preconditions.py): every answer with an agent has
`ETag: "<version>"`; PUT, PATCH and DELETE with `If-Match: "<version>"` apply only if the
agent is still at that version, checked by compare-and-set on its KV revision, so of two
editors who read version 7 only the first write lands and the second gets 412 Precondition
Failed with the current `ETag` (re-read, re-apply, retry). Without If-Match the last write
wins (a PATCH is still applied to the latest version: two PATCHes of different fields both land).

Deleting an agent deletes its knowledge documents from the object store too, after the
agent (a failed If-Match deletes nothing). A document that cannot be deleted then (NATS
unreachable) is logged and stays until the agent is deleted again or re-created and the
document deleted through the API: a re-created agent of the same id would find it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from services.gateway.api_errors import ErrorResponse, error
from services.gateway.preconditions import etag, if_match
from voxline.agents import Agent, AgentStore, InvalidAgent, UnknownAgent, check_id
from voxline.agents.documents import agent_documents, delete_document, open_bucket
from voxline.agents.live import AgentExists, LiveAgents, VersionMismatch, WriteConflict
from voxline.bus import Bus

log = logging.getLogger("voxline.gateway.agents")

MAX_BODY = 256 * 1024  # an agent with a long prompt is a few KiB; knowledge documents go elsewhere
FIELDS = frozenset(Agent.__struct_fields__)
_AT = re.compile(r"at `\$\.([^`]+)`")  # msgspec's path to the bad value
_MISSING = re.compile(r"missing required field `([^`]+)`")
_LEADING = re.compile(r"^(?:knowledge )?([a-z_]+)(?:\[\d+\])?")  # Agent's own checks name it first
_DOTTED = re.compile(r"^([a-z_]+(?:\.[A-Za-z0-9_]+)+):")  # a nested check names its path first (analysis.fields.x.type)


# OpenAPI: the Agent's JSON Schema as msgspec gives it, registered as components.
(_AGENT_REF,), _COMPONENTS = msgspec.json.schema_components((Agent,), ref_template="#/components/schemas/{name}")
_VERSIONED = {
    "allOf": [
        _AGENT_REF,
        {"type": "object", "properties": {"version": {"type": "integer", "description": "Grows on every write."}}},
    ]
}
_EXAMPLE = {
    "id": "florist",
    "name": "Rosa's Flowers",
    "greeting": "Rosa's Flowers, how can I help?",
    "system_prompt": "You take flower orders for Rosa's Flowers. Keep answers short.",
    "language": "en",
    "outbound_allowlist": ["+1415555*"],
    "analysis": {
        "summary": True,
        "fields": {
            "callback_number": {"type": "string", "description": "The number to call the customer back on."},
            "order_placed": {"type": "boolean"},
            "occasion": {"type": "string", "enum": ["birthday", "wedding", "funeral", "other"]},
        },
    },
}


def _body(description: str) -> dict[str, Any]:
    content = {"application/json": {"schema": _AGENT_REF, "example": _EXAMPLE}}
    return {"requestBody": {"required": True, "description": description, "content": content}}


def _answer(description: str) -> dict[str, Any]:
    example = {**_EXAMPLE, "version": 7}
    return {"description": description, "content": {"application/json": {"schema": _VERSIONED, "example": example}}}


def _errors(*codes: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    common = ((401, "Missing, unknown or revoked API key."), (403, "The key lacks the scope (writes need admin)."))
    return {code: {"model": ErrorResponse, "description": why} for code, why in (*common, *codes)}


_INVALID = (422, "Not an agent: `error.field` names the field (`greeting`, `turn.idle_hangup_s`, `tools[0].to`).")
_NO_AGENT = (404, "No such agent.")
_STORE_DOWN = (503, "The agent store (NATS) is not reachable yet.")
_STALE = (412, "`If-Match` names a version the agent is no longer at; the answer's `ETag` is the current one.")
_IF_MATCH = {
    "parameters": [
        {
            "name": "If-Match",
            "in": "header",
            "required": False,
            "description": 'Apply only if the agent is still at this version: its `ETag` (`"7"`) or `*`. Else 412.',
            "schema": {"type": "string"},
            "example": '"7"',
        }
    ]
}


def _register_components(app: FastAPI) -> None:
    built = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = built()
        schema.setdefault("components", {}).setdefault("schemas", {}).update(_COMPONENTS)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def agent_json(agent: Agent, version: int) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.to_builtins(agent)
    doc["version"] = version
    return doc


def versioned_answer(agent: Agent, version: int, status_code: int = 200) -> JSONResponse:
    return JSONResponse(agent_json(agent, version), status_code=status_code, headers={"ETag": etag(version)})


def stale(exc: VersionMismatch) -> JSONResponse:
    message = f"{exc}: read it again (GET), re-apply the change, send it with If-Match: {etag(exc.current)}"
    return error(412, message, headers={"ETag": etag(exc.current)}, current_version=exc.current)


async def delete_knowledge(bus: Bus, agent_id: str) -> None:
    """The deleted agent's documents: no agent reads them any more, and a new agent of the
    same id must not find the old one's."""
    try:
        documents = await agent_documents(bus, agent_id)
        if not documents:
            return
        objects = await open_bucket(bus)
        for document in documents:
            await delete_document(objects, agent_id, document.name)
        log.info("agent %s: %d knowledge documents deleted with it", agent_id, len(documents))
    except Exception as exc:
        log.error("agent %s deleted, its knowledge documents not: %s: %s", agent_id, type(exc).__name__, exc)


def field_of(message: str) -> str:
    """The field a validation message names (`turn.idle_hangup_s`, `tools[0].to`), or ""."""
    dotted = _DOTTED.match(message)
    if dotted and dotted.group(1).split(".")[0] in FIELDS:
        return dotted.group(1)
    at, missing = _AT.search(message), _MISSING.search(message)
    path = ".".join(m.group(1) for m in (at, missing) if m)
    if path:
        return path
    if message.startswith("knowledge "):
        return "knowledge"
    lead = _LEADING.match(message)
    return lead.group(0) if lead and lead.group(1) in FIELDS else ""


def invalid(message: str, field: str = "") -> JSONResponse:
    return error(422, message, field=field or field_of(message))


async def body_of(request: Request) -> dict[str, Any] | JSONResponse:
    data = await request.body()
    if len(data) > MAX_BODY:
        return error(413, f"an agent is at most {MAX_BODY // 1024} KiB")
    try:
        doc = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        return invalid(f"the body is not JSON: {exc}")
    if not isinstance(doc, dict):
        return invalid("the body is a JSON object of the agent's fields")
    unknown = sorted(k for k in doc if k not in FIELDS and k != "version")
    if unknown:
        return invalid(f"unknown field {unknown[0][:64]!r}", field=unknown[0][:64])
    doc.pop("version", None)  # the store's to give, not the client's
    return doc


def install(app: FastAPI, agents: AgentStore) -> None:
    _register_components(app)

    def live() -> LiveAgents | JSONResponse:
        if agents.live is None:
            return error(503, "the agent store is not reachable yet (NATS); try again")
        return agents.live

    def parse(doc: dict[str, Any], agent_id: str) -> Agent | JSONResponse:
        try:
            return agents.parse(doc, agent_id)
        except InvalidAgent as exc:
            return invalid(str(exc))

    @app.post(
        "/v1/agents",
        status_code=201,
        tags=["agents"],
        summary="Create an agent",
        openapi_extra=_body("The agent's fields; `id` is required (a-z, 0-9, - and _)."),
        responses={
            201: _answer("The agent, with its first version."),
            **_errors(_INVALID, (409, "An agent with this id exists."), (413, "Over 256 KiB."), _STORE_DOWN),
        },
    )
    async def create_agent(request: Request) -> JSONResponse:
        store = live()
        doc = await body_of(request)
        if isinstance(store, JSONResponse):
            return store
        if isinstance(doc, JSONResponse):
            return doc
        agent_id = doc.get("id")
        if not isinstance(agent_id, str) or not agent_id:
            return invalid("id is required: lower-case letters, digits, - and _ (at most 64)", field="id")
        try:
            check_id(agent_id)
        except UnknownAgent:
            return invalid(f"id {agent_id[:64]!r} is not lower-case letters, digits, - and _ (at most 64)", "id")
        agent = parse(doc, agent_id)
        if isinstance(agent, JSONResponse):
            return agent
        try:
            created = await store.create(agent)
        except AgentExists as exc:
            return error(409, f"{exc}: change it with PUT or PATCH /v1/agents/{agent_id}")
        log.info("agent %s created (version %d)", agent_id, created.version)
        return versioned_answer(*created, status_code=201)

    @app.get("/v1/agents", tags=["agents"], summary="List the agents", responses=_errors())
    async def list_agents() -> dict[str, Any]:
        if agents.live is None:  # not on the bus yet: what the directory holds
            return {"agents": [{"id": a, "name": agents.get(a).name, "version": 0} for a in agents.ids()]}
        found = sorted(agents.live.current.items())
        return {"agents": [{"id": i, "name": v.agent.name, "version": v.version} for i, v in found]}

    @app.get(
        "/v1/agents/{agent_id}",
        tags=["agents"],
        summary="Get an agent",
        responses={
            200: _answer('The agent and its current version, also as the `ETag` header (`"7"`).'),
            **_errors(_NO_AGENT),
        },
    )
    async def get_agent(agent_id: str) -> JSONResponse:
        try:
            agent, version = agents.versioned(agent_id)
        except (UnknownAgent, InvalidAgent) as exc:
            return error(404, str(exc))
        return versioned_answer(agent, version)

    async def update(request: Request, agent_id: str, merge: bool) -> JSONResponse:
        store = live()
        doc = await body_of(request)
        if isinstance(store, JSONResponse):
            return store
        if isinstance(doc, JSONResponse):
            return doc
        if doc.get("id", agent_id) != agent_id:
            return invalid("id cannot change (create the new agent, then delete this one)", field="id")
        try:
            check_id(agent_id)
        except UnknownAgent as exc:
            return error(404, str(exc))

        def change(old: Agent) -> Agent:
            fields = {**msgspec.to_builtins(old), **doc} if merge else doc
            return agents.parse(fields, agent_id)

        try:
            updated = await store.update(agent_id, change, if_match(request.headers.get("if-match")))
        except UnknownAgent as exc:
            return error(404, str(exc))
        except InvalidAgent as exc:
            return invalid(str(exc))
        except VersionMismatch as exc:
            return stale(exc)
        except WriteConflict as exc:
            return error(409, str(exc))
        log.info("agent %s updated (version %d)", agent_id, updated.version)
        return versioned_answer(*updated)

    @app.put(
        "/v1/agents/{agent_id}",
        tags=["agents"],
        summary="Replace an agent (fields left out take their defaults)",
        openapi_extra={**_body("Every field of the agent; `id`, if given, must be the path's."), **_IF_MATCH},
        responses={
            200: _answer("The agent, with its new version (and ETag)."),
            **_errors(_NO_AGENT, _INVALID, _STALE, _STORE_DOWN),
        },
    )
    async def replace_agent(agent_id: str, request: Request) -> JSONResponse:
        return await update(request, agent_id, merge=False)

    @app.patch(
        "/v1/agents/{agent_id}",
        tags=["agents"],
        summary="Change some fields of an agent",
        openapi_extra={**_body("Only the fields to change."), **_IF_MATCH},
        responses={
            200: _answer("The agent, with its new version (and ETag)."),
            **_errors(_NO_AGENT, _INVALID, _STALE, _STORE_DOWN),
        },
    )
    async def patch_agent(agent_id: str, request: Request) -> JSONResponse:
        return await update(request, agent_id, merge=True)

    @app.delete(
        "/v1/agents/{agent_id}",
        status_code=204,
        tags=["agents"],
        summary="Delete an agent and its knowledge documents (calls running it go on)",
        openapi_extra=_IF_MATCH,
        responses=_errors(_NO_AGENT, _STALE, _STORE_DOWN),
    )
    async def delete_agent(agent_id: str, request: Request) -> Response:
        store = live()
        if isinstance(store, JSONResponse):
            return store
        try:
            check_id(agent_id)
        except UnknownAgent as exc:
            return error(404, str(exc))
        try:
            if not await store.delete(agent_id, if_match(request.headers.get("if-match"))):
                return error(404, f"unknown agent {agent_id!r}")
        except VersionMismatch as exc:
            return stale(exc)
        log.info("agent %s deleted", agent_id)
        await delete_knowledge(store.bus, agent_id)
        return Response(status_code=204)
