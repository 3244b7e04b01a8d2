"""Knowledge retrieval (paragraph chunks, BM25) and the prompt it builds; tool-call deltas."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from proto.messages import BrainTurn, ChatTurn
from services.brain.prompt import PromptBuilder
from services.brain.providers.base import ReplyAction
from services.brain.providers.tool_calls import ToolCall, ToolCallAccumulator, call_action
from voxline.agents import Agent, AgentStore, InvalidAgent
from voxline.agents.knowledge import Bm25, Chunk, KnowledgeEntry, load_chunks, split_paragraphs, tokenize
from voxline.agents.tools import Tool

FAQ = """Opening hours: Monday to Friday 8 AM to 6 PM, Saturday 9 AM to 1 PM.

Parking is free behind the building.

Whitening costs 350 dollars; a check-up with cleaning costs 120 dollars.
"""

AGENT = """
name = "Clinic"
greeting = "Hello."
system_prompt = "You are the clinic's receptionist."
[[knowledge]]
file = "faq.md"

[[knowledge]]
title = "Insurance"
text = "We accept Delta Dental, Aetna and Cigna. We do not accept Medicaid."

[[tools]]
name = "transfer_to_front_desk"
description = "Transfer the caller to a human."
kind = "transfer_call"
to = "+15550100"
"""


def turn(text: str, history: list[ChatTurn] | None = None) -> BrainTurn:
    return BrainTurn(
        call_id="c", turn_id=1, agent_id="clinic", history=history or [], user_text=text, requested_at_us=0
    )


def test_paragraphs_split_on_blank_lines_and_long_ones_at_line_ends() -> None:
    assert split_paragraphs("a\nb\n\n\n c \n") == ["a\nb", "c"]
    lines = [f"{i}" * 50 for i in range(10)]
    chunks = split_paragraphs("\n".join(lines), max_chars=120, overlap_chars=0)
    assert all(len(c) <= 120 for c in chunks) and "".join(chunks).replace("\n", "") == "".join(lines)


def test_tokens_drop_stopwords_and_fold_plurals() -> None:
    assert tokenize("What are your prices for the cleanings?") == ["price", "clean"]


def test_bm25_ranks_the_matching_paragraph_first_and_skips_unrelated_ones() -> None:
    index = Bm25([Chunk("faq", p) for p in split_paragraphs(FAQ)])
    assert index.top("how much is teeth whitening", k=3)[0].text.startswith("Whitening")
    assert [c.text[:7] for c in index.top("where do I park", k=3)] == ["Parking"]
    assert index.top("zebra", k=3) == []
    scores = index.scores("hours on saturday")
    assert scores[0] > 0 and scores[1] == 0


def test_rare_terms_weigh_more_than_common_ones() -> None:
    chunks = [Chunk("k", t) for t in ("clinic open clinic", "clinic parking", "clinic whitening")]
    assert Bm25(chunks).top("clinic whitening", k=1)[0].text == "clinic whitening"


def test_inline_entries_and_files_become_chunks(tmp_path: Path) -> None:
    (tmp_path / "faq.md").write_text(FAQ)
    chunks = load_chunks(["faq.md", KnowledgeEntry(title="Dogs", text="Guide dogs are welcome.")], tmp_path)
    assert [c.source for c in chunks] == ["faq.md"] * 3 + ["Dogs"]


def test_system_prompt_carries_the_top_chunks_after_the_agent_prompt(tmp_path: Path) -> None:
    (tmp_path / "faq.md").write_text(FAQ)
    (tmp_path / "clinic.toml").write_text(AGENT)
    builder = PromptBuilder(AgentStore(tmp_path), top_k=1)
    agent, messages = builder.messages(turn("Do you take Aetna insurance?"))
    system = messages[0]["content"]
    assert system.startswith("You are the clinic's receptionist.")
    assert "Aetna" in system and "Parking" not in system
    assert messages[-1] == {"role": "user", "content": "Do you take Aetna insurance?"}
    assert agent.tools[0].kind == "transfer_call"
    # A follow-up finds its topic through the last turn.
    history = [ChatTurn("user", "When are you open?"), ChatTurn("assistant", "Monday to Friday.")]
    _, messages = builder.messages(turn("And on Saturday hours?", history))
    assert "Saturday 9 AM" in messages[0]["content"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]


def test_missing_knowledge_file_leaves_the_plain_prompt(tmp_path: Path) -> None:
    (tmp_path / "clinic.toml").write_text(AGENT)
    _, messages = PromptBuilder(AgentStore(tmp_path)).messages(turn("Aetna?"))
    assert "Aetna" in messages[0]["content"]  # the inline entry still counts
    assert "Parking" not in messages[0]["content"]


def test_a_webhook_tool_needs_a_url(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(
        'name="b"\ngreeting="g"\nsystem_prompt="s"\n[[tools]]\nname="x"\ndescription="d"\nkind="webhook"\n'
    )
    with pytest.raises(InvalidAgent):
        AgentStore(tmp_path).get("bad")


def delta(index: int, id: str | None = None, name: str | None = None, args: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(index=index, id=id, function=SimpleNamespace(name=name, arguments=args))


def test_streamed_tool_call_pieces_are_reassembled_by_index() -> None:
    acc = ToolCallAccumulator()
    acc.add([delta(0, "call_1", "lookup", "")])
    acc.add([delta(0, args='{"da'), delta(1, "call_2", "end", "")])
    acc.add([delta(0, args='y": "tue"}')])
    calls = acc.calls()
    assert [(c.id, c.name, c.parsed()) for c in calls] == [("call_1", "lookup", {"day": "tue"}), ("call_2", "end", {})]


def test_transfer_uses_the_configured_number_over_the_models() -> None:
    fixed = Tool(name="t", description="d", kind="transfer_call", to="+15550100")
    free = Tool(name="t", description="d", kind="transfer_call")
    asked = ToolCall("c", "t", ['{"phone_number": "+15559999"}'])
    agent = Agent(id="a", name="A", greeting="", system_prompt="", tools=[fixed], transfer_allowlist=["+1555*"])
    assert call_action(agent, fixed, asked) == ReplyAction("transfer", "+15550100")
    assert call_action(agent, free, asked) == ReplyAction("transfer", "+15559999")  # on its allowlist
    assert isinstance(call_action(agent, free, ToolCall("c", "t", ["not json"])), str)  # the model is told why
    assert call_action(agent, Tool(name="e", description="d", kind="end_call"), asked) == ReplyAction("hangup")
