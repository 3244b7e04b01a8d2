"""Per-call variables: `{{customer_name}}` in an agent's prompt and messages, filled in for
each call, the way Vapi and Retell users write them.

Where a value comes from, later winning over earlier:
1. the agent's `default_variables` (its own fallbacks, e.g. `customer_name = "there"`);
2. the call's `variables` (`POST /v1/calls`);
3. the built-ins, set by the call itself and not overridable: `customer_number` (the other
   party: the caller of an inbound call, the callee of an outbound one), `agent_number` (our
   Twilio number on the call), `call_id`, `direction` (`inbound` or `outbound`). Inbound
   calls get these and the defaults; only `POST /v1/calls` sets per-call variables.

A placeholder is `{{` name `}}`, spaces around the name allowed (`{{ customer_name }}`), the
name as for a key (KEY below). One with no value anywhere becomes the empty string: never a
crash, and never the braces read out by the voice. Substitution is one pass over the
template: a value containing `{{other}}` is inserted as written, never expanded in turn
(a value is caller data, never template). Text in braces that is not a placeholder
(`{{ 1 + 1 }}`, `{x}`, a lone `{{`) stays as written; a template cannot escape a
well-formed placeholder, which is the only thing ever replaced.

Values are caller data (names, appointments): they are stored in the call record, passed
to the brain in each `BrainTurn` and never logged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
KEY_HELP = "a letter or _, then letters, digits or _ (at most 64)"
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*\}\}")
MAX_VARIABLES = 32
MAX_VALUE_CHARS = 500
BUILTINS = ("customer_number", "agent_number", "call_id", "direction")


class InvalidVariables(ValueError):
    """`field` names what is wrong (`variables` or `variables.<key>`), for the API's 422."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def render(template: str, values: Mapping[str, str]) -> str:
    """The template with every placeholder replaced by its value ("" when it has none)."""
    if "{{" not in template:
        return template
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), template)


def placeholders(template: str) -> list[str]:
    """The names a template uses, in order of first use."""
    return list(dict.fromkeys(PLACEHOLDER.findall(template)))


def checked(raw: object, what: str = "variables") -> dict[str, str]:
    """Variables as given by a client (JSON: strings, numbers, booleans), as strings.
    Raise InvalidVariables naming the field. `what` names the field (`variables`,
    `default_variables`)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidVariables(f"{what} is an object of name -> value", what)
    if len(raw) > MAX_VARIABLES:
        raise InvalidVariables(f"{what}: at most {MAX_VARIABLES} variables, not {len(raw)}", what)
    values: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not KEY.match(key):
            shown = str(key)[:64]
            raise InvalidVariables(f"{what}: name {shown!r} is not {KEY_HELP}", f"{what}.{shown}")
        field = f"{what}.{key}"
        if key in BUILTINS:
            raise InvalidVariables(f"{field}: {key!r} is a built-in variable, set by the call", field)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = value
        elif isinstance(value, (int, float)):
            try:
                text = str(value)
            except ValueError:  # an int past Python's 4300-digit conversion limit
                raise InvalidVariables(f"{field}: at most {MAX_VALUE_CHARS} characters", field) from None
        else:
            raise InvalidVariables(f"{field}: a value is a string, number or boolean", field)
        if len(text) > MAX_VALUE_CHARS:
            raise InvalidVariables(f"{field}: at most {MAX_VALUE_CHARS} characters, not {len(text)}", field)
        values[key] = text
    return values


def builtins(call_id: str, direction: str, from_number: str, to_number: str) -> dict[str, str]:
    outbound = direction == "outbound"
    return {
        "customer_number": to_number if outbound else from_number,
        "agent_number": from_number if outbound else to_number,
        "call_id": call_id,
        "direction": direction,
    }


def call_values(
    defaults: Mapping[str, str], variables: Mapping[str, str], built_in: Mapping[str, str]
) -> dict[str, str]:
    """What a call's placeholders are filled with (the order in the module's docstring)."""
    return {**defaults, **variables, **built_in}


# How the call's variables travel from `POST /v1/calls` to the orchestrator: JSON in the
# voice URL's query (VARIABLES_QUERY, signed by Twilio with the rest of the URL), then in
# the media stream's `<Parameter name=VARIABLES_PARAMETER>`, which Twilio hands back in the
# stream's `start` message; the gateway moves it into CallStart.variables.
VARIABLES_QUERY = "vars"
VARIABLES_PARAMETER = "variables"


def encode_parameter(values: Mapping[str, str]) -> str:
    return json.dumps(dict(values), ensure_ascii=False, separators=(",", ":"))


def decode_parameter(text: str) -> dict[str, str]:
    """The variables of a voice URL or stream parameter; {} when there are none or they are
    not what `encode_parameter` makes (a hand-made request: the call goes on without them)."""
    if not text:
        return {}
    try:
        return checked(json.loads(text))
    except (ValueError, RecursionError):
        return {}
