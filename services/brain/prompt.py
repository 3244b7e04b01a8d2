"""The chat messages of a turn: the agent's system prompt with the knowledge that matches
the caller's words, the conversation so far, and what the caller just said.

The agent's own prompt comes first and never changes, and the retrieved knowledge is
appended after it: llama-server keeps the KV of the longest common token prefix, so the
agent's prompt stays cached across turns and calls even as the knowledge changes.

An agent's index (voxline/agents/retrieval.py) is built once per document set, when the
agent is first seen or a knowledge file changes, never per turn; retrieval runs within a
budget, and a retrieval that fails leaves the turn without knowledge, never without a reply.

The document set is the files the agent's TOML names plus the documents uploaded through
`/v1/agents/{id}/knowledge` (voxline/agents/documents.py keeps them in memory, chunked, as
the object store changes): an upload or a delete changes the next turn's retrieval, never
a turn whose prompt is already made, and a turn never waits on the network for them.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from proto.messages import BrainTurn
from voxline.agents import Agent, AgentStore
from voxline.agents.documents import Document
from voxline.agents.knowledge import Chunk, knowledge_prompt, load_chunks
from voxline.agents.retrieval import Embedder, HybridIndex, turn_query
from voxline.agents.variables import render
from voxline.telemetry import stage_histogram

log = logging.getLogger("voxline.brain.prompt")

RETRIEVAL = stage_histogram("voxline_brain_retrieval_seconds", "Knowledge retrieval of a turn (BM25 and embedding).")


class PromptBuilder:
    def __init__(
        self,
        agents: AgentStore,
        top_k: int = 3,
        embedder: Embedder | None = None,
        budget_s: float = 0.025,
        background: bool = True,
    ) -> None:
        self.agents = agents
        self.top_k = top_k
        self.embedder = embedder
        self.budget_s = budget_s
        self.background = background  # False: an index's embeddings are ready when index() returns
        self._lock = threading.Lock()  # messages() may run in worker threads
        # agent id -> (the Agent it was built from, knowledge files' mtimes and uploads, index)
        self._indexes: dict[str, tuple[Agent, tuple[Any, ...], HybridIndex]] = {}

    def _mtimes(self, agent: Agent) -> tuple[float, ...]:
        names = [e if isinstance(e, str) else e.file for e in agent.knowledge]
        paths = [self.agents.directory / name if name else None for name in names]
        return tuple(p.stat().st_mtime if p is not None and p.exists() else 0.0 for p in paths)

    def _uploads(self, agent: Agent) -> tuple[Document, ...]:
        documents = self.agents.documents
        return documents.of(agent.id) if documents is not None else ()

    def index(self, agent: Agent) -> HybridIndex | None:
        """The agent's index, rebuilt when the agent, a knowledge file or an upload changed."""
        uploads = self._uploads(agent)
        if not agent.knowledge and not uploads:
            return None
        # An upload is its name and nuid (new on every write): a replaced document rebuilds.
        mtimes = (*self._mtimes(agent), *((d.name, d.nuid) for d in uploads))
        with self._lock:
            cached = self._indexes.get(agent.id)
            # By knowledge, not by version: an edit of the greeting keeps the index, and calls
            # on two versions with the same documents do not rebuild it turn by turn.
            if cached is not None and cached[0].knowledge == agent.knowledge and cached[1] == mtimes:
                return cached[2]
            if cached is not None:
                cached[2].close()
            index = self._build(agent, uploads)
            self._indexes[agent.id] = (agent, mtimes, index)
            return index

    def _build(self, agent: Agent, uploads: tuple[Document, ...] = ()) -> HybridIndex:
        chunks: list[Chunk] = []
        for entry in agent.knowledge:
            try:
                chunks += load_chunks([entry], Path(self.agents.directory))
            except OSError as exc:  # a missing file must not cost the caller the rest
                log.error("knowledge of agent %s: %s unreadable: %s", agent.id, entry, type(exc).__name__)
        for document in uploads:
            chunks += document.chunks
        log.info("knowledge of agent %s: %d chunks", agent.id, len(chunks))
        return HybridIndex(chunks, self.embedder, background=self.background, label=agent.id)

    def warm(self) -> None:
        """Index every agent now, so the first call of the day does not find its embeddings
        still being computed (BM25 would answer it alone)."""
        for agent_id in self.agents.ids():
            try:
                self.index(self.agents.get(agent_id))
            except Exception as exc:  # an invalid agent is reported when a call asks for it
                log.warning("knowledge of agent %s not indexed: %s", agent_id, type(exc).__name__)

    def knowledge(self, agent: Agent, turn: BrainTurn) -> list[Chunk]:
        """The chunks for this turn: the caller's words plus recent context, so "and on
        Saturdays?" still finds the hours."""
        index = self.index(agent)
        if index is None:
            return []
        query = turn_query(turn.user_text, [(t.role, t.content) for t in turn.history])
        with RETRIEVAL.time():
            return index.search(query, self.top_k, self.budget_s)

    def system_prompt(self, agent: Agent, turn: BrainTurn) -> str:
        # The call's variables in its placeholders (voxline/agents/variables.py); the knowledge
        # after it is document text, never a template.
        prompt = render(agent.system_prompt, turn.variables).strip()
        started = time.perf_counter()
        try:
            found = knowledge_prompt(self.knowledge(agent, turn))
        except Exception:  # the caller still gets an answer, without the documents
            log.exception("knowledge of agent %s: retrieval failed; answering without it", agent.id)
            found = ""
        log.debug("knowledge of agent %s: %.1f ms", agent.id, (time.perf_counter() - started) * 1e3)
        return f"{prompt}\n\n{found}" if found else prompt

    def messages(self, turn: BrainTurn) -> tuple[Agent, list[dict[str, Any]]]:
        agent = self.agents.get(turn.agent_id, turn.agent_version)  # as the call started
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.system_prompt(agent, turn)}]
        messages += [{"role": t.role, "content": t.content} for t in turn.history if t.role in ("user", "assistant")]
        messages.append({"role": "user", "content": turn.user_text})
        return agent, messages
