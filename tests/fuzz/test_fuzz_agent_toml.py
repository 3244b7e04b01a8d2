"""Agent files (voxline/agents): whatever an agent's TOML holds (bytes, garbled TOML, valid
TOML of the wrong shape, the demo agent with damage), loading it gives an Agent or raises
InvalidAgent/UnknownAgent; nothing else, and within a second. Any agent id too."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.harness import Count, assert_clean, batch_settings, bounded, pytest_timeout_s, run_target
from tests.fuzz.strategies import SHORT_TEXT, TEXT, TOML_VALUES, mutated, toml_value
from voxline.agents import BUNDLED_DIR, Agent, AgentStore, InvalidAgent, UnknownAgent

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(pytest_timeout_s())]

DEMO = (BUNDLED_DIR / "demo.toml").read_text()
FIELDS = [*sorted(Agent.__struct_fields__), "turn", "knowledge", "tools"]
TURN_FIELDS = ["complete_silence_ms", "incomplete_silence_ms", "idle_reprompt_s", "idle_hangup_s", "acoustic_weight"]
TOOL_FIELDS = ["name", "description", "kind", "parameters", "to", "url", "timeout_s", "say"]


@st.composite
def shaped(draw: st.DrawFn) -> str:
    """Valid TOML built from the agent's own keys (and some others), any values: the
    shape checks are what this reaches."""
    doc: dict[str, Any] = {"name": "n", "greeting": "g", "system_prompt": "p"}
    for key in draw(st.lists(st.sampled_from(FIELDS) | SHORT_TEXT, max_size=6)):
        doc[key] = draw(TEXT | TOML_VALUES)  # text often: most fields are strings
    lines = [f"{toml_value(k)} = {toml_value(v)}" for k, v in doc.items()]
    if draw(st.booleans()):
        lines.append("[turn]")
        for key in draw(st.lists(st.sampled_from(TURN_FIELDS) | SHORT_TEXT, max_size=4)):
            lines.append(f"{toml_value(key)} = {toml_value(draw(TOML_VALUES))}")
    for _ in range(draw(st.integers(0, 2))):
        lines.append("[[tools]]")
        for key in draw(st.lists(st.sampled_from(TOOL_FIELDS), max_size=6)):
            kinds = ["transfer_call", "end_call", "webhook", "send_dtmf", "http://x"]
            value = draw(st.sampled_from(kinds) | TOML_VALUES)
            lines.append(f"{key} = {toml_value(value)}")
    for _ in range(draw(st.integers(0, 2))):
        lines.append("[[knowledge]]")
        for key in draw(st.lists(st.sampled_from(["title", "text", "path"]) | SHORT_TEXT, max_size=3)):
            lines.append(f"{toml_value(key)} = {toml_value(draw(TOML_VALUES))}")
    return "\n".join(lines) + "\n"


CONTENTS = st.one_of(
    st.binary(max_size=2000),
    TEXT,
    shaped(),
    mutated(DEMO),
    # Deep nesting, which recursive parsers meet with the interpreter's stack.
    st.integers(1, 50_000).map(lambda n: "x = " + "[" * n + "]" * n + "\n"),
    st.integers(1, 50_000).map(lambda n: "x = " + "{a = " * n + "1" + "}" * n + "\n"),
    st.integers(1, 5_000).map(lambda n: "[" + ".".join(["a"] * n) + "]\n"),
)
CONTENT_BYTES = CONTENTS.map(lambda c: c if isinstance(c, bytes) else c.encode("utf-8"))
AGENT_IDS = st.one_of(st.just("fuzz"), st.from_regex(r"[a-z0-9][a-z0-9_-]{0,70}", fullmatch=True), TEXT)


def toml_batch(count: Count, examples: int, directory: Path) -> Callable[[], None]:
    @batch_settings(examples)
    @given(CONTENT_BYTES, AGENT_IDS)
    def prop(content: bytes, agent_id: str) -> None:
        (directory / "fuzz.toml").write_bytes(content)
        with count.trying(content, agent_id), bounded(2.0):
            for asked in ("fuzz", agent_id):
                try:
                    agent = AgentStore(directory).get(asked)  # a new store: no cache by mtime
                except (InvalidAgent, UnknownAgent):
                    continue
                assert isinstance(agent, Agent) and agent.id == asked

    return prop


def test_fuzz_agent_toml() -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-agents-") as tmp:
        directory = Path(tmp)
        assert_clean(run_target("agent toml", lambda count, n: toml_batch(count, n, directory)))
