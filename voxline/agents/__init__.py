"""Agent definitions: who the AI is on a given number. Stored in JetStream KV, created and
changed through `/v1/agents` (services/gateway/agents_api.py); TOML files (one per agent)
are the import format (`voxline agents apply -f DIR`) and seed an empty store.

Where an agent may dial (every call is paid by its owner; see voxline/agents/dialling.py):

| field | meaning |
|---|---|
| `transfer_allowlist` | numbers a `transfer_call` tool without `to` may go to; the model chooses among them |
| `outbound_allowlist` | numbers `POST /v1/calls` may dial for this agent (else 403) |

Entries are exact E.164 numbers (`"+14155550123"`) or prefixes ending in `*` (`"+1415555*"`:
every number starting with +1415555); anything else makes the agent invalid, naming the
field. Both are empty by default, and empty allows nothing: the model can choose no number
(a transfer tool without `to` is then not offered to it), and the agent makes no outbound
calls, so neither a prompt-injected caller nor a leaked API key can run up premium-rate
calls. A tool's fixed `to` is the owner's own choice and always allowed; when
`transfer_allowlist` is not empty the fixed `to` must be on it too (one list to review).
Only strict E.164 numbers (`+`, 7 to 15 ASCII digits) are ever dialled.

Knowledge files and the agent's own file must be inside the agents directory (symlinks
resolved): an absolute path or one leading out (`../secret`, a link to /proc/self/environ)
makes the agent invalid.
"""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from voxline.agents.analysis import AnalysisOptions
from voxline.agents.dialling import ENTRY_HELP, Allowlist, DestinationNotAllowed, invalid_entries, is_e164, masked
from voxline.agents.knowledge import KnowledgeEntry, KnowledgePathError, confined
from voxline.agents.tools import Tool
from voxline.agents.turn_options import TurnOptions
from voxline.agents.variables import InvalidVariables, checked
from voxline.webhooks.signing import settings_problem as webhook_settings_problem

if TYPE_CHECKING:
    from voxline.agents.documents import KnowledgeDocuments
    from voxline.agents.live import LiveAgents
    from voxline.bus import Bus

log = logging.getLogger("voxline.agents")
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
    transfer_allowlist: list[str] = []  # see the table above
    outbound_allowlist: list[str] = []
    # Events of its calls are POSTed here, signed with the secret held by the environment
    # variable `webhook_secret_env` names (voxline/webhooks/signing.py says which may be).
    webhook_url: str = ""
    webhook_secret_env: str = ""
    # The post-call analysis (`[analysis]`, voxline/agents/analysis.py); None: no analysis.
    analysis: AnalysisOptions | None = None
    # Fallbacks for the `{{name}}` placeholders of the prompt and messages, when a call does
    # not give the variable (voxline/agents/variables.py); without one a placeholder is "".
    default_variables: dict[str, str] = {}

    def __post_init__(self) -> None:
        try:
            checked(self.default_variables, "default_variables")
        except InvalidVariables as exc:
            raise ValueError(str(exc)) from None
        if problem := webhook_settings_problem(self.webhook_url, self.webhook_secret_env):
            raise ValueError(problem)
        for field in ("transfer_allowlist", "outbound_allowlist"):
            for i in invalid_entries(getattr(self, field)):
                raise ValueError(f"{field}[{i}] {getattr(self, field)[i][:32]!r} is not {ENTRY_HELP}")
        allowlist = Allowlist(self.transfer_allowlist)
        for i, tool in enumerate(self.tools):
            if tool.kind != "transfer_call" or not tool.to:
                continue
            if not is_e164(tool.to):
                raise ValueError(f"tools[{i}].to {tool.to[:32]!r} is not an E.164 number like +14155550123")
            if allowlist and not allowlist.allows(tool.to):
                raise ValueError(f"tools[{i}].to {tool.to} is not allowed by transfer_allowlist")

    def may_transfer_to(self, number: str) -> bool:
        """A fixed `to` of one of its transfer tools, or a number its allowlist allows."""
        fixed = {tool.to for tool in self.tools if tool.kind == "transfer_call" and tool.to}
        return is_e164(number) and (number in fixed or Allowlist(self.transfer_allowlist).allows(number))

    def check_transfer(self, number: str) -> None:
        if not self.may_transfer_to(number):
            raise DestinationNotAllowed(f"agent {self.id} does not allow a transfer to {masked(number)}")

    def may_call(self, number: str) -> bool:
        """May `POST /v1/calls` dial this number for the agent."""
        return Allowlist(self.outbound_allowlist).allows(number)

    def openai_tools(self) -> list[dict[str, Any]]:
        """The tools offered to the model; a transfer that could go nowhere is left out."""
        allowlist = Allowlist(self.transfer_allowlist)
        return [schema for tool in self.tools if (schema := tool.openai_schema(allowlist)) is not None]


class UnknownAgent(LookupError):
    pass


class InvalidAgent(ValueError):
    pass


class AgentStore:
    """The agents a service runs. Started on the bus (`start`), it answers from JetStream KV,
    the one source of truth, through an in-memory copy a watch keeps current
    (voxline/agents/live.py); the TOML directory (the bundled agents when none is given)
    then only seeds an empty bucket. Not started (unit tests, tools), it reads the
    directory itself, re-reading a file when it changes.

    Agent ids come from requests (`?agent=`, `POST /v1/calls`, `/v1/agents/{id}`), so they
    are held to a strict pattern before they name a file or a key, and a file (symlinks
    resolved) must be in the directory: an id can never make the store read anything else."""

    def __init__(self, directory: str | Path = "") -> None:
        self.directory = Path(directory) if directory else BUNDLED_DIR
        self._cache: dict[str, tuple[float, Agent]] = {}
        self.live: LiveAgents | None = None
        # The documents uploaded through the API, when started with `knowledge` (the brain).
        self.documents: KnowledgeDocuments | None = None

    async def start(self, bus: Bus, knowledge: bool = False) -> None:
        """Follow the agents bucket from now on (seeding it from the directory if empty);
        with `knowledge`, the uploaded documents' bucket too (voxline/agents/documents.py)."""
        from voxline.agents.documents import KnowledgeDocuments
        from voxline.agents.live import LiveAgents

        if self.live is None:
            live = LiveAgents(bus, self)
            await live.start()
            self.live = live
        if knowledge and self.documents is None:
            documents = KnowledgeDocuments(bus)
            await documents.start()
            self.documents = documents

    async def stop(self) -> None:
        if self.live is not None:
            await self.live.stop()
        if self.documents is not None:
            await self.documents.stop()

    def get(self, agent_id: str, version: int = 0) -> Agent:
        """The agent, at `version` when given and known here (else its latest: see `at`)."""
        check_id(agent_id)
        if self.live is None:
            return self._from_file(agent_id)
        if version:
            agent = self.live.at(agent_id, version)
            if agent is not None:
                return agent
            log.warning("agent %s version %d is not in memory; its latest answers", agent_id, version)
        return self.versioned(agent_id)[0]

    def versioned(self, agent_id: str) -> tuple[Agent, int]:
        """The agent and its version (0 for a file agent), for a call to keep from its start."""
        check_id(agent_id)
        if self.live is None:
            return self._from_file(agent_id), 0
        found = self.live.versioned(agent_id)
        if found is None:
            why = self.live.invalid.get(agent_id)
            if why is not None:
                raise InvalidAgent(f"agent {agent_id} is invalid: {why}")
            raise UnknownAgent(f"unknown agent {agent_id!r}")
        return found.agent, found.version

    async def at(self, agent_id: str, version: int) -> Agent:
        """The agent as it was at `version` (the one a running call started with), read back
        from the bucket when this service never saw it; its latest when that is gone too."""
        if self.live is not None and version:
            check_id(agent_id)
            try:
                agent = await self.live.fetch(agent_id, version)
            except Exception as exc:
                log.warning("agent %s version %d unreadable (%s); its latest answers", agent_id, version, exc)
                agent = None
            if agent is not None:
                return agent
        return self.get(agent_id)

    def parse(self, doc: Any, agent_id: str) -> Agent:
        """An agent from a decoded TOML or JSON document, or InvalidAgent naming the field."""
        if not isinstance(doc, dict):
            raise InvalidAgent("an agent is an object (a TOML table)")
        try:
            agent = msgspec.convert({**doc, "id": agent_id}, Agent)
        except (msgspec.ValidationError, ValueError) as exc:
            raise InvalidAgent(str(exc)) from None
        except RecursionError:
            raise InvalidAgent("nested too deeply") from None
        self._check_knowledge(agent)
        return agent

    def _from_file(self, agent_id: str) -> Agent:
        path = self.directory / f"{agent_id}.toml"
        try:
            confined(self.directory, path.name)
        except KnowledgePathError:
            raise InvalidAgent(f"agent file {path.name} leads outside the agents directory") from None
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
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InvalidAgent(f"agent file {path} is invalid: {exc}") from None
        except RecursionError:  # tomllib recurses per nested array or table
            raise InvalidAgent(f"agent file {path} is invalid: nested too deeply") from None
        if doc.get("id", agent_id) != agent_id:  # the file name is the id the store answers to
            raise InvalidAgent(f"agent file {path} says id = {str(doc['id'])[:64]!r}; its id is its name")
        try:
            agent = self.parse(doc, agent_id)
        except InvalidAgent as exc:
            raise InvalidAgent(f"agent file {path} is invalid: {exc}") from None
        self._cache[agent_id] = (mtime, agent)
        return agent

    def _check_knowledge(self, agent: Agent) -> None:
        for entry in agent.knowledge:
            name = entry if isinstance(entry, str) else entry.file
            if not name:
                continue
            try:
                confined(self.directory, name)
            except KnowledgePathError as exc:
                raise InvalidAgent(f"knowledge {exc}") from None

    def ids(self) -> list[str]:
        if self.live is not None:
            return sorted(self.live.current)
        return self.file_ids()

    def file_ids(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.toml") if _AGENT_ID.fullmatch(p.stem))

    def file_agents(self) -> list[Agent]:
        """The valid agents of the directory (an invalid file is logged and left out)."""
        agents = []
        for agent_id in self.file_ids():
            try:
                agents.append(self._from_file(agent_id))
            except (UnknownAgent, InvalidAgent) as exc:
                log.error("agent %s not seeded: %s", agent_id, exc)
        return agents


_SHARED: dict[str, AgentStore] = {}


def shared_store(directory: str = "") -> AgentStore:
    """One store per process and directory, for the parts of a service that are built
    apart from its bus (the brain's providers) but must read the store it starts."""
    store = _SHARED.get(directory)
    if store is None:
        store = _SHARED[directory] = AgentStore(directory)
    return store


def check_id(agent_id: str) -> None:
    if not _AGENT_ID.fullmatch(agent_id):  # fullmatch: `$` would let "demo\n" through
        raise UnknownAgent(f"invalid agent id {agent_id[:64]!r}")
