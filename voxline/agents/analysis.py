"""An agent's post-call analysis, from `[analysis]` in its TOML (or `analysis` in the
`/v1/agents` JSON): after the hang-up a brain worker reads the transcript and writes a
summary plus the structured fields asked for here, into the call record and the
`call.ended` webhook (services/brain/analysis.py, services/orchestrator/analysis.py).

| field | meaning |
|---|---|
| `summary` | write a few sentences on the call (default true) |
| `fields` | a JSON-schema `properties` object: name -> `{type, description, enum}` |
| `instructions` | the owner's words on what to look for (optional) |

A field's `type` is `string`, `number`, `integer` or `boolean`; `description` tells the model
what to put there; `enum` (not for booleans) lists the only values allowed, of that type.
Every field may come back null, when the call did not tell. Names are letters, digits and
`_` (not starting with a digit), at most 64 characters; `summary` is taken. An agent without
`[analysis]` gets none (the record says `status: none`). Anything else makes the agent
invalid, naming the field (`analysis.fields.callback_number.type`).

```toml
[analysis]
summary = true
[analysis.fields.callback_number]
type = "string"
description = "The number the caller wants to be called back on, in E.164."
[analysis.fields.wants_appointment]
type = "boolean"
description = "Whether the caller asked to book an appointment."
```
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

from proto.messages import AnalysisField

MAX_FIELDS = 25  # a summary and a form a model fills reliably; OpenAI allows far more
MAX_DESCRIPTION = 500
MAX_INSTRUCTIONS = 2000
MAX_ENUM = 50
RESERVED = frozenset({"summary"})  # the summary's own key in the model's answer
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_KEYS = frozenset(AnalysisField.__struct_fields__)
_ENUM_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "number": (int, float)}


# What /openapi.json says a field is (the struct keeps the raw object, to name a bad one).
_FIELD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "type": {"enum": ["string", "number", "integer", "boolean"]},
        "description": {"type": "string", "maxLength": MAX_DESCRIPTION},
        "enum": {"type": "array", "items": {"type": ["string", "number"]}, "minItems": 1, "maxItems": MAX_ENUM},
    },
    "required": ["type"],
    "additionalProperties": False,
}
Fields = Annotated[
    dict[str, Annotated[dict[str, Any], msgspec.Meta(extra_json_schema=_FIELD_SCHEMA)]],
    msgspec.Meta(
        description="The structured fields to fill: a JSON-schema `properties` object, name -> "
        "{type, description, enum}; each comes back null when the call did not tell.",
        examples=[{"callback_number": {"type": "string", "description": "The number to call back."}}],
        extra_json_schema={"maxProperties": MAX_FIELDS},
    ),
]


class AnalysisOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The post-call analysis: a summary and the structured fields the agent asks for."""

    summary: Annotated[bool, msgspec.Meta(description="Write a few sentences on the call.")] = True
    # Kept as given (the API shows back what was written); `specs` is the checked form.
    fields: Fields = {}
    instructions: Annotated[
        str, msgspec.Meta(description="The owner's words on what to look for.", max_length=MAX_INSTRUCTIONS)
    ] = ""

    def __post_init__(self) -> None:
        if not self.summary and not self.fields:
            raise ValueError("analysis.summary: the analysis asks for nothing (summary = false and no fields)")
        if len(self.instructions) > MAX_INSTRUCTIONS:
            raise ValueError(f"analysis.instructions: at most {MAX_INSTRUCTIONS} characters")
        if len(self.fields) > MAX_FIELDS:
            raise ValueError(f"analysis.fields: at most {MAX_FIELDS} fields")
        for name, spec in self.fields.items():
            field_spec(name, spec)

    def specs(self) -> dict[str, AnalysisField]:
        return {name: field_spec(name, spec) for name, spec in self.fields.items()}


def field_spec(name: str, spec: dict[str, Any]) -> AnalysisField:
    """One field's JSON-schema property, checked; ValueError naming `analysis.fields.<name>...`."""
    where = f"analysis.fields.{name[:64]}"
    if not _NAME.fullmatch(name):
        raise ValueError(f"analysis.fields: {name[:64]!r} is not a field name (letters, digits, _; at most 64)")
    if name in RESERVED:
        raise ValueError(f"{where}: {name!r} is taken by the summary")
    unknown = sorted(str(k) for k in spec if k not in _KEYS)
    if unknown:
        raise ValueError(f"{where}.{unknown[0][:32]}: not supported (a field has type, description and enum)")
    try:
        field = msgspec.convert(spec, AnalysisField)
    except msgspec.ValidationError as exc:
        message = str(exc)
        at = re.search(r" - at `\$\.([A-Za-z_]+)", message)
        suffix = f".{at.group(1)}" if at else ""
        raise ValueError(f"{where}{suffix}: {message.split(' - at ')[0]}") from None
    if len(field.description) > MAX_DESCRIPTION:
        raise ValueError(f"{where}.description: at most {MAX_DESCRIPTION} characters")
    if field.enum is not None:
        allowed = _ENUM_TYPES.get(field.type)
        if allowed is None:
            raise ValueError(f"{where}.enum: a {field.type} field takes no enum")
        if not 0 < len(field.enum) <= MAX_ENUM:
            raise ValueError(f"{where}.enum: 1 to {MAX_ENUM} values")
        for value in field.enum:
            if isinstance(value, bool) or not isinstance(value, allowed):
                raise ValueError(f"{where}.enum: {str(value)[:32]!r} is not of type {field.type}")
        if len(set(field.enum)) != len(field.enum):
            raise ValueError(f"{where}.enum: values repeat")
    return field
