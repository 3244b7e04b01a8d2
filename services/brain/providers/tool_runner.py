"""One tool call of the model, run and reported: what the model is told, what the reply
must do at its end, and the `ToolCallReport` that goes into the call record.

The report keeps the model's arguments as they came: they may be the caller's own data
(a name, an account number), so they travel to the record on the bus and are never logged.

`send_dtmf` does not end the reply the way a transfer does: the model is told the keys
are pressed after what it says now, so it can wait for the IVR's next prompt (it usually
says nothing), and the reply ends with the `dtmf` action. One `send_dtmf` per reply: the
IVR must answer the first keys before more make sense; and no transfer or hang-up after
keys in the same reply, since those would cut the keys off.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import httpx

from proto.messages import ToolCallReport
from services.brain.providers.base import TOOL_CALLS, ReplyAction
from services.brain.providers.tool_calls import ToolCall, call_action, run_webhook
from voxline.agents import Agent
from voxline.agents.tools import Tool, dtmf_digits
from voxline.telemetry import now_us

log = logging.getLogger("voxline.brain.tools")

DTMF_SENT_NOTE = (
    "The keys are pressed right after what you say now. Wait for the next prompt; say nothing unless needed."
)


@dataclass(frozen=True)
class ToolOutcome:
    report: ToolCallReport
    content: str = ""  # the tool message for the model's next round
    action: ReplyAction | None = None  # ends the reply now (hang up, transfer)
    dtmf: str = ""  # keys to press once the reply was heard


def _error(message: str) -> str:
    return json.dumps({"error": message})


async def run_tool(
    client: httpx.AsyncClient, agent: Agent, tool: Tool | None, call: ToolCall, call_id: str, dtmf_pending: str
) -> ToolOutcome:
    """Run `call` (a complete tool call of the model); `dtmf_pending`: keys this reply
    already queued."""
    started = time.monotonic()
    TOOL_CALLS.labels(kind=tool.kind if tool is not None else "unknown").inc()
    content, error, refused = "", "", False
    action: ReplyAction | None = None
    dtmf = ""
    if tool is None:
        log.warning("model called unknown tool %r", call.name[:64])
        error = f"no tool named {call.name[:64]}"
    elif tool.kind == "webhook":
        content, error = await run_webhook(client, tool, call, call_id)
    elif tool.kind == "send_dtmf":
        if dtmf_pending:
            error, refused = "keys were already pressed in this reply: wait for the next prompt", True
        else:
            try:
                dtmf = dtmf_digits(call.parsed().get("digits"))
                content = json.dumps({"status": "sent", "digits": dtmf, "note": DTMF_SENT_NOTE})
            except ValueError as exc:
                error, refused = str(exc), True
    elif dtmf_pending:
        error, refused = "keys are still to be pressed: end or transfer the call in your next reply", True
    else:
        outcome = call_action(agent, tool, call)
        if isinstance(outcome, ReplyAction):
            action = outcome
        else:  # a transfer refused: the model hears why
            content, refused = outcome, True
            error = str(json.loads(outcome).get("error", "refused"))
    if error and not content:
        content = _error(error)
    report = ToolCallReport(
        name=call.name[:64],
        kind=tool.kind if tool is not None else "",
        arguments=call.arguments,
        result=_action_result(action) if action is not None else content if not error else "",
        error=error,
        refused=refused,
        duration_ms=round((time.monotonic() - started) * 1000, 1),
        at_us=now_us(),
    )
    return ToolOutcome(report, content, action, dtmf)


def _action_result(action: ReplyAction) -> str:
    """What a call that ends the reply did, in the record's words."""
    return json.dumps({"action": action.action, **({"to": action.arg} if action.arg else {})})
