"""Tools an agent may call, from `[[tools]]` in its TOML.

| field | meaning |
|---|---|
| `name` | function name the model sees |
| `description` | when the model should use it |
| `parameters` | JSON schema of the arguments (an empty object schema when omitted) |
| `kind` | `transfer_call`, `end_call` or `webhook` |
| `to` | transfer_call: the number to dial; when set, the model's argument is ignored (no dialling anywhere) |
| `url` | webhook: POSTed the arguments as JSON; the response body is the tool result |
| `timeout_s` | webhook: how long the caller waits for it (default 3 s) |
| `say` | what the agent says when it ends or transfers the call without words of its own |
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

ToolKind = Literal["transfer_call", "end_call", "webhook"]

EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
TRANSFER_SAY = "Please hold while I transfer your call."


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

    def openai_schema(self) -> dict[str, Any]:
        """The tool as OpenAI's `tools` entry (also what Groq, vLLM and llama-server take)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }
