"""Tool calls of a streamed chat completion: reassembled from their deltas, then run.

OpenAI-compatible endpoints stream a call as pieces keyed by `index`: the id and the
function name first, then the JSON arguments in fragments, and `finish_reason`
"tool_calls" at the end. Only a complete call is acted on.

Webhook failures (timeout, refused, non-2xx) are not errors of the turn: the failure is
handed to the model as the tool's result, so it can tell the caller in its own words
instead of the line going silent or an apology that explains nothing.

So is a transfer to a number the agent does not allow (voxline/agents/dialling.py): a
caller can talk the model into "transferring" them to a premium-rate number, and the
owner pays. The number the model returned is checked (E.164, the agent's allowlist)
before any transfer is ordered; a refused one never leaves the brain, and the model is
told so and answers the caller.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.brain.providers.base import ReplyAction
from voxline.agents import Agent
from voxline.agents.dialling import Allowlist, masked, normalise
from voxline.agents.tools import NUMBER_ARGUMENTS, Tool

log = logging.getLogger("voxline.brain.tools")

MAX_RESULT_CHARS = 4000  # a chatty webhook must not blow up the context window


@dataclass
class ToolCall:
    id: str = ""
    name: str = ""
    argument_parts: list[str] = field(default_factory=list)

    @property
    def arguments(self) -> str:
        return "".join(self.argument_parts)

    def parsed(self) -> dict[str, Any]:
        """The arguments as an object; {} for what is not a JSON object (models slip)."""
        try:
            value = json.loads(self.arguments or "{}")
        except json.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}

    def message(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class ToolCallAccumulator:
    def __init__(self) -> None:
        self._calls: dict[int, ToolCall] = {}

    def add(self, deltas: list[Any]) -> None:
        """Feed `choices[0].delta.tool_calls` of one chunk."""
        for delta in deltas:
            call = self._calls.setdefault(delta.index, ToolCall())
            if delta.id:
                call.id = delta.id
            function = delta.function
            if function is not None:
                if function.name:
                    call.name += function.name
                if function.arguments:
                    call.argument_parts.append(function.arguments)

    def calls(self) -> list[ToolCall]:
        return [self._calls[i] for i in sorted(self._calls) if self._calls[i].name]

    def __bool__(self) -> bool:
        return bool(self.calls())


def call_action(agent: Agent, tool: Tool, call: ToolCall) -> ReplyAction | str:
    """What ending or transferring the call means for the reply; for a transfer that may
    not happen, the tool result that tells the model why. (Webhooks are run elsewhere.)"""
    if tool.kind == "end_call":
        return ReplyAction("hangup")
    asked = tool.to or transfer_target(call)
    if not asked:
        return json.dumps({"error": "no number to transfer to"})
    number = normalise(asked)
    if number and agent.may_transfer_to(number):
        return ReplyAction("transfer", number)
    # The model's argument may hold the caller's words: only its shape is logged.
    log.warning("agent %s, tool %s: transfer to %s refused (not allowed)", agent.id, tool.name[:64], masked(asked))
    allowed = Allowlist(agent.transfer_allowlist).describe()
    return json.dumps({"error": f"transfer refused: that number is not allowed. Numbers allowed: {allowed}."})


def transfer_target(call: ToolCall) -> str:
    """The model's number: a usual argument name (phone_number), else the first string."""
    args = call.parsed()
    for key in NUMBER_ARGUMENTS:
        if isinstance(args.get(key), str) and args[key].strip():
            return str(args[key]).strip()
    return next((str(v).strip() for v in args.values() if isinstance(v, str) and v.strip()), "")


async def run_webhook(client: httpx.AsyncClient, tool: Tool, call: ToolCall, call_id: str) -> tuple[str, str]:
    """POST the arguments to the tool's URL: the tool message content for the model, and
    what went wrong ("" when the webhook answered)."""

    def failed(error: str) -> tuple[str, str]:
        return json.dumps({"error": error}), error

    try:
        response = await client.post(
            tool.url, json=call.parsed(), timeout=tool.timeout_s, headers={"X-Voxline-Call-Id": call_id}
        )
    except httpx.TimeoutException:
        log.error("tool %s: webhook timed out after %.1fs", tool.name, tool.timeout_s)
        return failed(f"the {tool.name} service did not answer in time")
    except httpx.HTTPError as exc:
        log.error("tool %s: webhook failed: %s", tool.name, type(exc).__name__)
        return failed(f"the {tool.name} service is unreachable")
    if response.status_code >= 400:
        log.error("tool %s: webhook answered HTTP %d", tool.name, response.status_code)
        return failed(f"the {tool.name} service failed (HTTP {response.status_code})")
    log.info("tool %s: webhook answered in %.0f ms", tool.name, response.elapsed.total_seconds() * 1000)
    return response.text[:MAX_RESULT_CHARS] or "{}", ""
