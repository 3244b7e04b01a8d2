"""Uploaded knowledge documents in the JetStream object store (`proto.knowledge`): writing
and listing them (the gateway) and following them (the brain).

nats-py's object store client looks a stream up by subject (`$JS.API.STREAM.NAMES`) before
each read and watch; reads here bind to the stream by name instead, so no service needs to
list every stream on the server. Writes and deletes use the client's own `put` and `delete`.

`KnowledgeDocuments` keeps every agent's documents in memory, chunked, kept current by an
ordered consumer on the bucket's meta subjects: a turn reads memory, never the network. What
it has applied is the gauge `voxline_knowledge_applied_seq` (the stream sequence of the last
change), so a test or an operator can tell that an upload has reached a brain.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from typing import TYPE_CHECKING, Any

from nats.js import api
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore
from prometheus_client import Gauge

from proto.knowledge import (
    H_BYTES,
    H_CHARACTERS,
    H_CHUNKS,
    H_CONTENT_TYPE,
    H_TEXT_TYPE,
    H_UPLOADED_AT,
    KNOWLEDGE_BUCKET,
    KnowledgeDocument,
    document_object,
)
from voxline.agents.knowledge import Chunk, chunk_document

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js.client import JetStreamContext

    from voxline.bus import Bus

log = logging.getLogger("voxline.agents.documents")

STREAM = f"OBJ_{KNOWLEDGE_BUCKET}"
ALL_META = f"$O.{KNOWLEDGE_BUCKET}.M.>"
READ_TIMEOUT_S = 5.0  # one object chunk or one listing message
APPLIED = Gauge("voxline_knowledge_applied_seq", "Stream sequence of the last knowledge document change applied.")


async def open_bucket(bus: Bus) -> ObjectStore:
    """The bucket, created if missing (idempotent: every replica asks with one config)."""
    js = bus.nc.jetstream()
    return await js.create_object_store(KNOWLEDGE_BUCKET, replicas=bus.kv_replicas)


def _header(info: api.ObjectInfo, name: str) -> str:
    value: Any = (info.headers or {}).get(name, "")
    return str(value[0] if isinstance(value, list) and value else value or "")


def _int(info: api.ObjectInfo, name: str) -> int:
    try:
        return int(_header(info, name))
    except ValueError:
        return 0


def listed(info: api.ObjectInfo) -> KnowledgeDocument:
    return KnowledgeDocument(
        name=info.name.split("/", 1)[-1],
        content_type=_header(info, H_CONTENT_TYPE),
        bytes=_int(info, H_BYTES),
        characters=_int(info, H_CHARACTERS),
        chunks=_int(info, H_CHUNKS),
        uploaded_at=_header(info, H_UPLOADED_AT),
    )


def text_type(info: api.ObjectInfo) -> str:
    return _header(info, H_TEXT_TYPE) or "text/plain"


async def put_document(
    store: ObjectStore, agent_id: str, name: str, text: str, content_type: str, text_kind: str, size: int, chunks: int
) -> KnowledgeDocument:
    """Store (or replace) a document's text with what the listing shows."""
    headers = {
        H_CONTENT_TYPE: [content_type],
        H_TEXT_TYPE: [text_kind],
        H_BYTES: [str(size)],
        H_CHARACTERS: [str(len(text))],
        H_CHUNKS: [str(chunks)],
        H_UPLOADED_AT: [datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")],
    }
    meta = api.ObjectMeta(name=document_object(agent_id, name), headers=headers)
    info = await store.put(meta.name or "", text.encode(), meta=meta)
    info.headers = headers
    return listed(info)


async def exists(store: ObjectStore, agent_id: str, name: str) -> bool:
    try:
        await store.get_info(document_object(agent_id, name))
    except Exception:  # ObjectNotFoundError, or a deleted one
        return False
    return True


async def delete_document(store: ObjectStore, agent_id: str, name: str) -> bool:
    """False when there is no such document."""
    if not await exists(store, agent_id, name):
        return False
    await store.delete(document_object(agent_id, name))
    return True


async def _meta_subscription(js: JetStreamContext, **kwargs: Any) -> Subscription:
    return await js.subscribe(
        ALL_META, stream=STREAM, ordered_consumer=True, deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT, **kwargs
    )


def _info(msg: Msg) -> api.ObjectInfo:
    info: api.ObjectInfo = api.ObjectInfo.from_response(json.loads(msg.data))
    return info


async def all_documents(bus: Bus) -> list[api.ObjectInfo]:
    """Every document's latest meta (deleted ones left out), read up to now."""
    js = bus.nc.jetstream()
    try:
        await js.get_last_msg(STREAM, ALL_META)
    except NotFoundError:
        return []
    sub = await _meta_subscription(js)
    found: dict[str, api.ObjectInfo] = {}
    try:
        while True:
            msg = await sub.next_msg(timeout=READ_TIMEOUT_S)
            info = _info(msg)
            if info.deleted:
                found.pop(info.name, None)
            else:
                found[info.name] = info
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return [found[n] for n in sorted(found)]


async def agent_documents(bus: Bus, agent_id: str) -> list[KnowledgeDocument]:
    prefix = document_object(agent_id, "")
    return [listed(i) for i in await all_documents(bus) if i.name.startswith(prefix)]


async def read_text(js: JetStreamContext, info: api.ObjectInfo) -> str:
    """A document's text, its digest checked."""
    if not info.size:
        return ""
    sub = await js.subscribe(f"$O.{KNOWLEDGE_BUCKET}.C.{info.nuid}", stream=STREAM, ordered_consumer=True)
    digest, parts = sha256(), []
    try:
        while True:
            msg = await sub.next_msg(timeout=READ_TIMEOUT_S)
            parts.append(msg.data)
            digest.update(msg.data)
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    wanted = base64.urlsafe_b64decode((info.digest or "").split("=", 1)[-1])
    if digest.digest() != wanted:
        raise ValueError(f"document {info.name}: digest mismatch")
    return b"".join(parts).decode()


@dataclass(frozen=True)
class Document:
    name: str
    nuid: str  # a new one on every upload: what an index compares to see a replacement
    chunks: tuple[Chunk, ...]


class KnowledgeDocuments:
    """Every agent's uploaded documents, chunked, in memory (see the module's docstring)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._docs: dict[str, dict[str, Document]] = {}
        self._sub: Subscription | None = None
        self.applied_seq = 0

    async def start(self) -> None:
        await open_bucket(self.bus)
        self._sub = await _meta_subscription(self.bus.nc.jetstream(), cb=self._on_meta)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    def of(self, agent_id: str) -> tuple[Document, ...]:
        """The agent's documents, by name."""
        docs = self._docs.get(agent_id, {})
        return tuple(docs[n] for n in sorted(docs))

    async def _on_meta(self, msg: Msg) -> None:
        """One change, applied in order (the callback runs one message at a time)."""
        try:
            info = _info(msg)
            agent_id, _, name = info.name.partition("/")
            # Copy on write: a prompt built in a worker thread may be reading the old dict.
            docs = dict(self._docs.get(agent_id, {}))
            if info.deleted:
                docs.pop(name, None)
                log.info("knowledge of agent %s: document %s removed", agent_id, name)
            else:
                text = await read_text(self.bus.nc.jetstream(), info)
                chunks = await asyncio.to_thread(chunk_document, text, name, text_type(info))
                docs[name] = Document(name, info.nuid, tuple(chunks))
                log.info("knowledge of agent %s: document %s, %d chunks", agent_id, name, len(chunks))
            self._docs[agent_id] = docs
        except Exception as exc:  # a document that vanished meanwhile, a broken meta: the next change goes on
            log.warning("knowledge change at %s not applied: %s: %s", msg.subject, type(exc).__name__, exc)
        self.applied_seq = msg.metadata.sequence.stream
        APPLIED.set(self.applied_seq)
