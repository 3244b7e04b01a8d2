"""Input generators shared by the fuzz targets: JSON values, TOML text, mutations of a
valid document. Text never holds lone surrogates, which no wire could carry as UTF-8."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import strategies as st

CHARS = st.characters(exclude_categories=["Cs"])
TEXT = st.text(CHARS, max_size=64)
SHORT_TEXT = st.text(CHARS, max_size=12)
SYNTAX = [*"[]{}=\"'\\\n#.,", "\x00", "\ufeff", "'''", '"""']  # what JSON and TOML are made of

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(SHORT_TEXT, inner, max_size=5),
    max_leaves=20,
)


@st.composite
def mutated(draw: st.DrawFn, document: str) -> str:
    """A valid document with a few bytes' worth of damage: cut, characters dropped,
    doubled or replaced, lines swapped. Finds the paths a parser takes on almost-valid input."""
    text = document
    for _ in range(draw(st.integers(1, 6))):
        if not text:
            break
        at = draw(st.integers(0, len(text) - 1))
        op = draw(st.sampled_from(["cut", "drop", "dup", "replace", "insert", "swap_lines"]))
        if op == "cut":
            text = text[:at]
        elif op == "drop":
            text = text[:at] + text[at + draw(st.integers(1, 8)) :]
        elif op == "dup":
            text = text[:at] + text[at : at + 16] + text[at:]
        elif op == "replace":
            text = text[:at] + draw(CHARS) + text[at + 1 :]
        elif op == "insert":
            text = text[:at] + draw(st.sampled_from(SYNTAX)) + text[at:]
        else:
            lines = text.splitlines()
            if len(lines) > 1:
                i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
                lines[i], lines[j] = lines[j], lines[i]
                text = "\n".join(lines)
    return text


# --- TOML ------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    """A TOML inline value (JSON's string escapes are TOML basic-string escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


TOML_SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    TEXT,
)
TOML_VALUES: st.SearchStrategy[Any] = st.recursive(
    TOML_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(SHORT_TEXT, inner, max_size=4),
    max_leaves=12,
)
