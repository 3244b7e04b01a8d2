"""Agent and knowledge files stay inside the agents directory: an agent's TOML or an agent
id from a request must never make Voxline read another file of the machine (the
environment of /proc/self/environ holds every provider key). Real files and symlinks in a
temporary directory."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from proto.messages import BrainTurn
from services.brain.prompt import PromptBuilder
from voxline.agents import AgentStore, InvalidAgent, UnknownAgent
from voxline.agents.knowledge import KnowledgePathError, load_chunks

HEAD = 'name = "X"\ngreeting = "Hi."\nsystem_prompt = "S"\n'
SECRET = "OPENAI_API_KEY=sk-do-not-read-me"


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """agents/ and, next to it, outside/ with a secret and a valid agent file."""
    agents, outside = tmp_path / "agents", tmp_path / "outside"
    agents.mkdir()
    outside.mkdir()
    (outside / "secret.md").write_text(SECRET)
    (outside / "x.toml").write_text(HEAD + 'knowledge = ["secret.md"]\n')
    return agents, outside


def agent_with(agents: Path, knowledge: str) -> None:
    (agents / "x.toml").write_text(HEAD + knowledge)


@pytest.mark.parametrize(
    "knowledge",
    [
        'knowledge = ["/proc/self/environ"]',
        'knowledge = ["../outside/secret.md"]',
        'knowledge = ["docs/../../outside/secret.md"]',
        '[[knowledge]]\nfile = "../outside/secret.md"',
        '[[knowledge]]\nfile = "/etc/passwd"',
        'knowledge = ["."]',
    ],
)
def test_a_knowledge_path_out_of_the_directory_makes_the_agent_invalid(dirs: tuple[Path, Path], knowledge: str) -> None:
    agents, _ = dirs
    agent_with(agents, knowledge)
    name = knowledge.split('"')[1]
    with pytest.raises(InvalidAgent, match=f"knowledge path {name!r}".replace(".", r"\.")):
        AgentStore(agents).get("x")


def test_a_knowledge_symlink_that_leads_out_is_refused(dirs: tuple[Path, Path]) -> None:
    agents, outside = dirs
    (agents / "faq.md").symlink_to(outside / "secret.md")
    (agents / "docs").symlink_to(outside)  # a linked directory leads out as well
    agent_with(agents, 'knowledge = ["faq.md"]')
    with pytest.raises(InvalidAgent, match=r"'faq\.md' leads outside"):
        AgentStore(agents).get("x")
    agent_with(agents, 'knowledge = ["docs/secret.md"]')
    with pytest.raises(InvalidAgent, match=r"'docs/secret\.md' leads outside"):
        AgentStore(agents).get("x")


def test_links_that_stay_inside_work_as_a_kubernetes_configmap_mounts_them(tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    (agents / "..2024_01_01").mkdir(parents=True)
    (agents / "..2024_01_01" / "faq.md").write_text("Parking is free behind the building.")
    (agents / "..2024_01_01" / "x.toml").write_text(HEAD + 'knowledge = ["faq.md", "sub/faq.md"]\n')
    (agents / "..data").symlink_to("..2024_01_01")
    (agents / "faq.md").symlink_to("..data/faq.md")
    (agents / "x.toml").symlink_to("..data/x.toml")
    (agents / "sub").mkdir()
    (agents / "sub" / "faq.md").write_text("Whitening costs 350 dollars.")
    agent = AgentStore(agents).get("x")
    chunks = load_chunks(agent.knowledge, agents)
    assert [c.text for c in chunks] == ["Parking is free behind the building.", "Whitening costs 350 dollars."]


def test_load_chunks_itself_refuses_a_path_out(dirs: tuple[Path, Path]) -> None:
    """A link may be changed after the agent loaded: the read checks again."""
    agents, _ = dirs
    for name in ("/proc/self/environ", "../outside/secret.md"):
        with pytest.raises(KnowledgePathError):
            load_chunks([name], agents)


def test_a_link_changed_after_loading_is_not_read_and_the_turn_goes_on(
    dirs: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    agents, outside = dirs
    (agents / "faq.md").write_text("Parking is free behind the building.")
    agent_with(agents, 'knowledge = ["faq.md"]')
    store = AgentStore(agents)
    store.get("x")
    (agents / "faq.md").unlink()
    (agents / "faq.md").symlink_to(outside / "secret.md")
    turn = BrainTurn(call_id="c", turn_id=1, agent_id="x", history=[], user_text="OPENAI key?", requested_at_us=0)
    with caplog.at_level(logging.ERROR):
        _, messages = PromptBuilder(store).messages(turn)
    assert SECRET not in str(messages) and "unreadable" in caplog.text


@pytest.mark.parametrize(
    "agent_id", ["../outside/x", "../x", "/etc/passwd", "x/../x", "x\n", "X", "", ".x", "x" * 65, "x.toml"]
)
def test_an_agent_id_names_no_file_outside_the_directory(dirs: tuple[Path, Path], agent_id: str) -> None:
    agents, _ = dirs
    agent_with(agents, "")
    with pytest.raises(UnknownAgent, match="invalid agent id"):
        AgentStore(agents).get(agent_id)


def test_an_agent_file_that_links_out_is_refused(dirs: tuple[Path, Path]) -> None:
    agents, outside = dirs
    (agents / "x.toml").symlink_to(outside / "x.toml")
    with pytest.raises(InvalidAgent, match="leads outside"):
        AgentStore(agents).get("x")


def test_ids_lists_only_agents_that_can_be_asked_for(dirs: tuple[Path, Path]) -> None:
    agents, _ = dirs
    agent_with(agents, "")
    (agents / "Not An Id.toml").write_text(HEAD)
    assert AgentStore(agents).ids() == ["x"]
