"""The chat messages of a turn: the agent's system prompt with the knowledge that matches
the caller's words, the conversation so far, and what the caller just said.

The agent's own prompt comes first and never changes, and the retrieved knowledge is
appended after it: llama-server keeps the KV of the longest common token prefix, so the
agent's prompt stays cached across turns and calls even as the knowledge changes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from proto.messages import BrainTurn
from voxline.agents import Agent, AgentStore
from voxline.agents.knowledge import Bm25, Chunk, knowledge_prompt, load_chunks

log = logging.getLogger("voxline.brain.prompt")


class PromptBuilder:
    def __init__(self, agents: AgentStore, top_k: int = 3) -> None:
        self.agents = agents
        self.top_k = top_k
        # agent id -> (the Agent it was built from, knowledge file mtimes, index)
        self._indexes: dict[str, tuple[Agent, tuple[float, ...], Bm25]] = {}

    def _mtimes(self, agent: Agent) -> tuple[float, ...]:
        names = [e if isinstance(e, str) else e.file for e in agent.knowledge]
        paths = [self.agents.directory / name if name else None for name in names]
        return tuple(p.stat().st_mtime if p is not None and p.exists() else 0.0 for p in paths)

    def index(self, agent: Agent) -> Bm25 | None:
        """The agent's BM25 index, rebuilt when the agent or a knowledge file changed."""
        if not agent.knowledge:
            return None
        mtimes = self._mtimes(agent)
        cached = self._indexes.get(agent.id)
        if cached is not None and cached[0] is agent and cached[1] == mtimes:
            return cached[2]
        chunks: list[Chunk] = []
        for entry in agent.knowledge:
            try:
                chunks += load_chunks([entry], Path(self.agents.directory))
            except OSError as exc:  # a missing file must not cost the caller the rest
                log.error("knowledge of agent %s: %s unreadable: %s", agent.id, entry, type(exc).__name__)
        index = Bm25(chunks)
        self._indexes[agent.id] = (agent, mtimes, index)
        log.info("knowledge of agent %s indexed: %d chunks", agent.id, len(chunks))
        return index

    def system_prompt(self, agent: Agent, turn: BrainTurn) -> str:
        prompt = agent.system_prompt.strip()
        index = self.index(agent)
        if index is None:
            return prompt
        # The caller's words plus the last exchange, so "and on Saturdays?" still finds the hours.
        last = [t.content for t in turn.history[-2:] if t.role in ("user", "assistant")]
        found = knowledge_prompt(index.top(" ".join([turn.user_text, *last]), self.top_k))
        return f"{prompt}\n\n{found}" if found else prompt

    def messages(self, turn: BrainTurn) -> tuple[Agent, list[dict[str, Any]]]:
        agent = self.agents.get(turn.agent_id)
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.system_prompt(agent, turn)}]
        messages += [{"role": t.role, "content": t.content} for t in turn.history if t.role in ("user", "assistant")]
        messages.append({"role": "user", "content": turn.user_text})
        return agent, messages
