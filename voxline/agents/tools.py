"""Tools an agent may call, from `[[tools]]` in its TOML.

| field | meaning |
|---|---|
| `name` | function name the model sees |
| `description` | when the model should use it |
| `parameters` | JSON schema of the arguments (an empty object schema when omitted) |
| `kind` | `transfer_call`, `end_call`, `webhook` or `send_dtmf` |
| `to` | transfer_call: the number to dial (E.164); when set, the model's argument is ignored |
|  | (without it the model chooses among the agent's `transfer_allowlist`, voxline/agents/__init__.py) |
| `url` | webhook: POSTed the arguments as JSON; the response body is the tool result |
| `timeout_s` | webhook: how long the caller waits for it (default 3 s) |
| `say` | what the agent says when it ends or transfers the call without words of its own |

`send_dtmf` lets the agent key digits into an IVR (an outbound call that meets "for billing
press 2"): the model's `digits` argument (0-9, `*`, `#`, and `w` for a half-second wait, at
most MAX_DTMF_DIGITS) is played as keypad tones once the reply's words were heard. Its
`parameters` are fixed (DTMF_SCHEMA); digits it cannot play go back to the model as an error.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import msgspec

from voxline.agents.dialling import Allowlist

ToolKind = Literal["transfer_call", "end_call", "webhook", "send_dtmf"]

EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
TRANSFER_SAY = "Please hold while I transfer your call."
NUMBER_ARGUMENTS = ("phone_number", "number", "to")  # where a model puts the number, most likely first
DTMF_KEYS = frozenset("0123456789*#w")
MAX_DTMF_DIGITS = 32  # an account number and a PIN with pauses; more is a model gone astray
DTMF_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "digits": {
            "type": "string",
            "description": "The keys to press, in order: 0-9, * and #; w waits half a second.",
            "pattern": f"^[0-9*#w]{{1,{MAX_DTMF_DIGITS}}}$",
        }
    },
    "required": ["digits"],
}


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
        parameters = DTMF_SCHEMA if self.kind == "send_dtmf" else self.parameters
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


def dtmf_digits(value: object) -> str:
    """The model's `digits` argument, checked: what the gateway can play, or ValueError
    saying what is wrong (it goes back to the model, which may try again)."""
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValueError("digits must be a string of keys such as '2' or '1234#'")
    digits = str(value).strip().replace(" ", "").replace("W", "w")
    if not digits:
        raise ValueError("no digits to press")
    if len(digits) > MAX_DTMF_DIGITS:
        raise ValueError(f"at most {MAX_DTMF_DIGITS} keys at a time")
    bad = sorted(set(digits) - DTMF_KEYS)
    if bad:
        raise ValueError(f"cannot press {''.join(bad)!r}: only 0-9, *, # and w (wait) exist")
    return digits
