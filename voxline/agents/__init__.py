"""Agent definitions: who the AI is on a given number. Files for now (one TOML per agent),
until agent storage arrives with the REST API."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated

import msgspec

from voxline.agents.knowledge import KnowledgeEntry
from voxline.agents.tools import Tool
from voxline.agents.turn_options import TurnOptions

BUNDLED_DIR = Path(__file__).parent
_AGENT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class Agent(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    greeting: str
    system_prompt: str
    voice: str = ""
    language: str = "en"
    keywords: list[str] = []
    goodbye: str = "Thank you for calling. Goodbye."
    apology: str = "Sorry, I'm having trouble right now. Could you say that again?"
    failure_message: str = "I'm sorry, we're having technical difficulties. Please call back later. Goodbye."
    # Said when no orchestrator or speech-to-text worker had room for the call.
    busy_message: str = "All our lines are busy right now. Please call back in a few minutes. Goodbye."
    # Said when a transfer's <Dial> was not answered (busy, no answer, failed).
    transfer_failed_message: str = "Sorry, nobody can take your call right now. Please call back later. Goodbye."
    # Every call ends by this length, with `time_limit_message` spoken: a stuck call or a
    # caller who never hangs up must not hold resources and minutes forever.
    max_call_s: Annotated[float, msgspec.Meta(gt=0)] = 1800.0
    time_limit_message: str = "We have reached the time limit for this call. Thank you for calling. Goodbye."
    turn: TurnOptions = msgspec.field(default_factory=TurnOptions)
    # Files (relative to the agent's directory) or inline `[[knowledge]]` entries; the
    # brain puts the paragraphs that match the caller's words into the system prompt.
    knowledge: list[str | KnowledgeEntry] = []
    tools: list[Tool] = []  # `[[tools]]`, see voxline/agents/tools.py


class UnknownAgent(LookupError):
    pass


class InvalidAgent(ValueError):
    pass


class AgentStore:
    """Reads agents from a directory (the bundled ones when none is given), re-reading a
    file when it changes so an edit needs no restart."""

    def __init__(self, directory: str | Path = "") -> None:
        self.directory = Path(directory) if directory else BUNDLED_DIR
        self._cache: dict[str, tuple[float, Agent]] = {}

    def get(self, agent_id: str) -> Agent:
        if not _AGENT_ID.match(agent_id):
            raise UnknownAgent(f"invalid agent id {agent_id!r}")
        path = self.directory / f"{agent_id}.toml"
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            raise UnknownAgent(f"unknown agent {agent_id!r} (no {path})") from None
        cached = self._cache.get(agent_id)
        if cached and cached[0] == mtime:
            return cached[1]
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # removed since the stat
            raise UnknownAgent(f"unknown agent {agent_id!r} (no {path})") from None
        except OSError as exc:  # a directory, no permission: still a bad agent, not a crash
            raise InvalidAgent(f"agent file {path} cannot be read: {exc.strerror}") from None
        try:
            doc = tomllib.loads(data.decode())
            if doc.get("id", agent_id) != agent_id:  # the file name is the id the store answers to
                raise InvalidAgent(f"agent file {path} says id = {str(doc['id'])[:64]!r}; its id is its name")
            agent = msgspec.convert({**doc, "id": agent_id}, Agent)
        except (msgspec.ValidationError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InvalidAgent(f"agent file {path} is invalid: {exc}") from None
        except RecursionError:  # tomllib recurses per nested array or table
            raise InvalidAgent(f"agent file {path} is invalid: nested too deeply") from None
        self._cache[agent_id] = (mtime, agent)
        return agent

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.toml"))
