"""Tools an agent may call, from `[[tools]]` in its TOML.

| field | meaning |
|---|---|
| `name` | function name the model sees |
| `description` | when the model should use it |
| `parameters` | JSON schema of the arguments (an empty object schema when omitted) |
| `kind` | `transfer_call`, `end_call` or `webhook` |
| `to` | transfer_call: the number to dial (E.164); when set, the model's argument is ignored |
|  | (without it the model chooses among the agent's `transfer_allowlist`, voxline/agents/__init__.py) |
| `url` | webhook: POSTed the arguments as JSON; the response body is the tool result |
| `timeout_s` | webhook: how long the caller waits for it (default 3 s) |
| `say` | what the agent says when it ends or transfers the call without words of its own |
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import msgspec

from voxline.agents.dialling import Allowlist

ToolKind = Literal["transfer_call", "end_call", "webhook"]

EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
TRANSFER_SAY = "Please hold while I transfer your call."
NUMBER_ARGUMENTS = ("phone_number", "number", "to")  # where a model puts the number, most likely first


class Tool(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str
    kind: ToolKind
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: dict(EMPTY_SCHEMA))
    to: str = ""
    url: str = ""
    timeout_s: float = 3.0
    say: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "webhook" and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"tool {self.name!r}: a webhook needs an http(s) url")

    def spoken_when_silent(self, goodbye: str) -> str:
        """What the agent says when the model called the tool without a word: a call must
        not go silent and then drop."""
        if self.say is not None:
            return self.say
        return goodbye if self.kind == "end_call" else TRANSFER_SAY if self.kind == "transfer_call" else ""

    def openai_schema(self, transfer_allowlist: Allowlist | None = None) -> dict[str, Any] | None:
        """The tool as OpenAI's `tools` entry (also what Groq, vLLM and llama-server take).

        A transfer whose number the model chooses gets that argument constrained to the
        agent's allowlist (an `enum` of exact numbers, else a `pattern`), so the model is
        shown the only choices it has; the brain checks its answer again all the same.
        None when the tool could do nothing: such a transfer with an empty allowlist."""
        parameters = self.parameters
        if self.kind == "transfer_call" and not self.to:
            allowlist = transfer_allowlist or Allowlist([])
            if not allowlist:
                return None
            parameters = self.number_schema(allowlist)
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": parameters},
        }

    def number_schema(self, allowlist: Allowlist) -> dict[str, Any]:
        parameters = copy.deepcopy(self.parameters)
        properties: dict[str, Any] = parameters.setdefault("properties", {})
        key = number_argument(properties)
        number: dict[str, Any] = {"type": "string", "description": f"E.164 number; allowed: {allowlist.describe()}"}
        if allowlist.prefixes:
            number["pattern"] = allowlist.pattern()
        else:
            number["enum"] = list(allowlist.exact)
        properties[key] = {**properties.get(key, {}), **number}
        required = parameters.setdefault("required", [])
        if key not in required:
            required.append(key)
        return parameters


def number_argument(properties: dict[str, Any]) -> str:
    """The argument the number goes in: one with a usual name, else `phone_number` (added;
    another string argument may be a reason or a department, not a number)."""
    return next((key for key in NUMBER_ARGUMENTS if key in properties), NUMBER_ARGUMENTS[0])
