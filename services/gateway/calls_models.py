"""What /openapi.json says the call endpoints return. The records themselves are msgspec
structs (proto/records.py, the bus contract) and are served as they are stored; these
pydantic models only document them, with examples, for a developer reading the API and
for client generators."""

from __future__ import annotations

from typing import Any

import msgspec
from pydantic import BaseModel, ConfigDict, Field, JsonValue, create_model

from proto.messages import LlmUsage, ToolCallReport
from proto.records import CallAnalysis, CallCosts, CallRecord, TurnRecord

_CALL_EXAMPLE: dict[str, JsonValue] = {
    "call_id": "CA5d0f2b0c8e7a4e1f9b3c6d2a1e0f4b7c",
    "call_sid": "CA5d0f2b0c8e7a4e1f9b3c6d2a1e0f4b7c",
    "agent_id": "demo",
    "status": "ended",
    "direction": "inbound",
    "from_number": "+15005550006",
    "to_number": "+15005550001",
    "started_at_us": 1796360400000000,
    "ended_at_us": 1796360461250000,
    "end_reason": "agent ended the call",
    "transfer_status": "",
    "stream_resumes": 0,
}


# What each field means. The models are made from the structs themselves, so a field added
# to CallRecord or TurnRecord is in /openapi.json at once, typed, even before it is described
# here (tests/unit/test_calls_cursor.py checks these name only fields the structs have).
CALL_FIELDS: dict[str, str] = {
    "call_id": "The call's id (Twilio's CallSid).",
    "call_sid": "Twilio's CallSid.",
    "agent_id": "The agent that took or placed the call.",
    "status": "`in-progress` while the call lasts, then `ended`.",
    "direction": "`inbound` (a caller dialled in) or `outbound` (placed with POST /v1/calls).",
    "from_number": "The caller's number (for an outbound call: our Twilio number).",
    "to_number": "The number called (for an inbound call: our Twilio number).",
    "started_at_us": "When the call started, µs since the Unix epoch (UTC).",
    "ended_at_us": "When it ended, µs since the epoch; 0 while in progress.",
    "end_reason": "Why it ended (the caller hung up, the agent ended it, busy, no-answer…).",
    "transfer_status": "A transfer's outcome as Twilio reports it (completed, busy, no-answer…).",
    "stream_resumes": "Media streams that broke and came back during the call.",
    "agent_version": "The version of the agent the call ran (GET /v1/agents/{id}); 0: an agent from a file.",
    "turns": "Every turn, in order.",
    "costs": "What a bill for the call is made of: audio seconds, TTS characters, LLM tokens.",
    "variables": "The call's variables as POST /v1/calls gave them (values of the agent's `{{name}}` "
    "placeholders); empty for an inbound call. Caller data: kept here, never logged.",
    "analysis": "The post-call analysis the brain wrote after the hang-up (the agent's `analysis`): null while "
    "the call lasts, then `pending` until written.",
}
ANALYSIS_FIELDS: dict[str, str] = {
    "status": "`pending` from the call's end until the brain answered, then `done` or `failed`; `none`: the "
    "agent asks for no analysis. The call.ended webhook is sent once it is not pending.",
    "summary": "A few sentences on the call (when the agent's analysis.summary is true).",
    "fields": "The agent's analysis.fields, each null when the call did not tell.",
    "provider": "The brain provider that wrote it: openai, local, or fake (whose analysis says it is fake).",
    "model": "The model that wrote it.",
    "error": "Why it failed (no brain answered in time, the model's JSON was outside the schema...).",
    "duration_ms": "The call's end to the analysis, in milliseconds.",
    "usage": "The analysis' own LLM tokens (not in costs, which are the call's); null when not reported.",
}
_ANALYSIS_EXAMPLE: dict[str, JsonValue] = {
    "status": "done",
    "summary": "The caller asked about teeth whitening prices and wants to book a cleaning next week.",
    "fields": {"callback_number": "+15005550006", "wants_appointment": True, "topic": "appointment"},
    "provider": "openai",
    "model": "gpt-4o",
    "error": "",
    "duration_ms": 1840.5,
    "usage": {"prompt_tokens": 412, "completion_tokens": 61},
}
COST_FIELDS: dict[str, str] = {
    "caller_audio_s": "The media stream's length, its start to the call's end (0 until the call ends).",
    "stt_audio_s": "Caller audio streamed to speech recognition: the whole stream, so the same figure.",
    "agent_audio_s": "Reply audio synthesized and sent to the caller, heard or not.",
    "tts_characters": "Characters of text sent to text-to-speech, a retry's again.",
    "llm_prompt_tokens": "Prompt tokens the LLM provider reported (a floor: see llm_replies_without_usage).",
    "llm_completion_tokens": "Completion tokens the LLM provider reported.",
    "llm_replies": "Replies the brain finished.",
    "llm_replies_without_usage": "Of those, replies the provider reported no usage for (the fake brain; a "
    "stream closed early because the reply was full).",
}
TURN_FIELDS: dict[str, str] = {
    "turn_id": "The turn's number within the call.",
    "kind": "What the agent's side of the turn was.",
    "caller_text": "What the caller said (the final transcript).",
    "reply_text": "What the agent said, or began to.",
    "heard_text": "What of the reply the caller heard (Twilio's marks confirm it).",
    "interrupted": "The caller talked over the reply and it stopped.",
    "cancel_reason": "Why the turn was cancelled, if it was.",
    "paused": "Times the caller talked over it without interrupting it.",
    "preemptive": "The reply started before the end of the caller's turn was confirmed.",
    "continues": "The turn whose unheard rest this one says, after a break; 0: none.",
    "latency": "Milliseconds per pipeline stage, in pipeline order (e.g. stt_final, llm_first_token, "
    "tts_first_audio, first_media_sent: the caller's end of speech to the first reply audio sent).",
    "tool_calls": "The tool calls the model made for this reply, in the order they ran, with their arguments "
    "and results (also refused ones).",
    "dtmf": "A `dtmf` turn: the keys it pressed (played as tones after the reply that asked for them).",
}
TOOL_CALL_FIELDS: dict[str, str] = {
    "name": "The tool's name, as the model called it.",
    "kind": "The tool's kind: transfer_call, end_call, webhook or send_dtmf; empty when the agent has no such tool.",
    "arguments": "The model's arguments: JSON text, as the model wrote it (it may not parse).",
    "result": "What the tool gave back to the model (a webhook's response body), or the action it ordered.",
    "error": "Why the call failed or was refused, as the model was told; empty when it worked.",
    "refused": "Not carried out on purpose: a transfer to a number the agent may not call, keys that cannot be "
    "pressed.",
    "duration_ms": "How long the tool took (a webhook's round trip).",
    "at_us": "When it finished, µs since the Unix epoch (UTC).",
}


def _model(
    name: str,
    struct: type[msgspec.Struct],
    descriptions: dict[str, str],
    doc: str,
    skip: tuple[str, ...] = (),
    types: dict[str, Any] | None = None,
    example: dict[str, JsonValue] | None = None,
) -> type[BaseModel]:
    """A pydantic model with the struct's fields, all present in every response (msgspec
    writes defaults too)."""
    fields: dict[str, Any] = {
        f.name: ((types or {}).get(f.name, f.type), Field(description=descriptions.get(f.name, "")))
        for f in msgspec.structs.fields(struct)
        if f.name not in skip
    }
    config = ConfigDict(json_schema_extra={"example": example}) if example else None
    model: type[BaseModel] = create_model(name, __doc__=doc, __config__=config, **fields)
    return model


CostsOut = _model("CallCosts", CallCosts, COST_FIELDS, "The call's cost drivers.")
ToolCallOut = _model(
    "ToolCall",
    ToolCallReport,
    TOOL_CALL_FIELDS,
    "One tool call of the model.",
    example={
        "name": "lookup_appointment",
        "kind": "webhook",
        "arguments": '{"name": "Ana Silva"}',
        "result": '{"appointment": "Tuesday afternoon"}',
        "error": "",
        "refused": False,
        "duration_ms": 84.2,
        "at_us": 1796360412500000,
    },
)
UsageOut = _model("LlmUsage", LlmUsage, {}, "Tokens an LLM provider reported.")
AnalysisOut = _model(
    "CallAnalysis",
    CallAnalysis,
    ANALYSIS_FIELDS,
    "The post-call analysis: a summary and the structured fields the agent asks for.",
    types={"usage": UsageOut | None},
    example=_ANALYSIS_EXAMPLE,
)
TurnOut = _model(
    "Turn",
    TurnRecord,
    TURN_FIELDS,
    "One turn: what the caller said and what the agent answered.",
    types={"tool_calls": list[ToolCallOut]},  # type: ignore[valid-type]  # a model made at import
)
CallSummaryOut = _model(
    "CallSummary",
    CallRecord,
    CALL_FIELDS,
    "A call as listed: its record without the turns (GET /v1/calls/{call_id} has them).",
    skip=("turns",),
    types={"costs": CostsOut, "analysis": AnalysisOut | None},
    example=_CALL_EXAMPLE,
)
CallRecordOut = _model(
    "CallRecord",
    CallRecord,
    CALL_FIELDS,
    "A call's whole record.",
    # Models made at import:
    types={"turns": list[TurnOut], "costs": CostsOut, "analysis": AnalysisOut | None},  # type: ignore[valid-type]
)


class CallList(BaseModel):
    """One page of calls, newest first."""

    calls: list[CallSummaryOut]  # type: ignore[valid-type]  # a model made at import
    next_cursor: str | None = Field(
        description="Pass as `cursor` (with the same filters) for the next page; null on the last page.",
        examples=["WzEsMTc5NjM2MDQwMDAwMDAwMCwiQ0E1ZDAiLCI4ZjE0ZTQ1ZmNlZWE0MjBmIiwiYjFjMiJd"],
    )
