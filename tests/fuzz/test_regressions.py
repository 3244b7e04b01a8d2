"""Inputs the fuzzers found that crashed a parser, kept as plain tests: each one raised
something other than the parser's documented error before its fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.gateway import twilio_protocol as tp
from voxline.agents import AgentStore, InvalidAgent

DEEP = 100_000  # far past the interpreter's recursion limit


@pytest.mark.parametrize(
    "message",
    [
        # The typed decoder gives up on `start` at once; the envelope decoder then skips it, recursing.
        '{"event":"start","start":' + "[" * DEEP + "]" * DEEP + "}",
        # An unknown field is skipped by the typed decoder itself, recursing.
        '{"event":"media","extra":' + "[" * DEEP + "]" * DEEP + "}",
        '{"event":"mark","mark":{"name":"a","x":' + '{"a":' * DEEP + "1" + "}" * DEEP + "}}",
    ],
)
def test_deeply_nested_twilio_message_is_a_protocol_error(message: str) -> None:
    """Was RecursionError out of `deserialize`, past the media stream's ProtocolError handler."""
    with pytest.raises(tp.ProtocolError, match="nested too deeply"):
        tp.TwilioSerializer.deserialize(message)


REQUIRED = 'name = "n"\ngreeting = "g"\nsystem_prompt = "p"\n'


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\x80", "invalid"),  # was UnicodeDecodeError from tomllib.load
        (REQUIRED.encode() + b'goodbye = "\xff"\n', "invalid"),
        (("x = " + "[" * 5000 + "]" * 5000 + "\n").encode(), "nested too deeply"),  # was RecursionError
        (("x = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n").encode(), "nested too deeply"),
        ((REQUIRED + 'id = "other"\n').encode(), "its id is its name"),  # was an Agent whose id was 'other'
    ],
)
def test_bad_agent_file_is_invalid_agent(tmp_path: Path, content: bytes, why: str) -> None:
    (tmp_path / "fuzz.toml").write_bytes(content)
    with pytest.raises(InvalidAgent, match=why):
        AgentStore(tmp_path).get("fuzz")


def test_agent_file_naming_its_own_id_loads(tmp_path: Path) -> None:
    (tmp_path / "fuzz.toml").write_text(REQUIRED + 'id = "fuzz"\n')
    assert AgentStore(tmp_path).get("fuzz").id == "fuzz"


def test_agent_path_that_is_a_directory_is_invalid_agent(tmp_path: Path) -> None:
    """Was IsADirectoryError (a 500 wherever an agent is looked up)."""
    (tmp_path / "fuzz.toml").mkdir()
    with pytest.raises(InvalidAgent, match="cannot be read"):
        AgentStore(tmp_path).get("fuzz")
