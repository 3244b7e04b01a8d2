"""The call record: what happened on a call, kept in the JetStream KV bucket
`CALL_RECORDS_BUCKET` under the call id. The orchestrator writes it, the gateway's REST
API serves it. After the orchestrator's last write the gateway adds what Twilio reports
later: a transfer's outcome, and the whole record of an outbound call nobody answered."""

from __future__ import annotations

from typing import Literal

import msgspec

from proto.messages import CallDirection, FieldValue, LlmUsage, ToolCallReport, TurnKind

CallStatus = Literal["in-progress", "ended"]

CALL_RECORDS_BUCKET = "voxline_calls"


class TurnRecord(msgspec.Struct, kw_only=True):
    turn_id: int
    kind: TurnKind
    caller_text: str = ""
    reply_text: str = ""
    heard_text: str = ""  # what Twilio's mark echoes confirm the caller heard
    interrupted: bool = False
    cancel_reason: str = ""
    paused: int = 0  # times the caller talked over it without interrupting (backchannel, noise)
    preemptive: bool = False  # the brain started before the end of turn was confirmed
    continues: int = 0  # the turn whose unheard rest this says, after a break (takeover, new stream)
    latency: dict[str, float] = {}  # stage -> ms, in pipeline order
    tool_calls: list[ToolCallReport] = []  # the model's tool calls for this reply, with arguments and results
    dtmf: str = ""  # a `dtmf` turn: the digits it played


class CallCosts(msgspec.Struct, kw_only=True):
    """What a bill for the call is made of, counted by the orchestrator from what passes
    through it (proto/README.md says where each figure comes from and what it leaves out).
    Every field defaults to 0, so records written before it existed still decode."""

    caller_audio_s: float = 0.0  # the media stream, its start to the call's end (written at the end)
    stt_audio_s: float = 0.0  # caller audio streamed to speech recognition: the whole stream
    agent_audio_s: float = 0.0  # reply audio synthesized and sent to the caller
    tts_characters: int = 0  # text sent to synthesis, retries included
    llm_prompt_tokens: int = 0  # as the LLM provider reported them (ReplyDone.usage)
    llm_completion_tokens: int = 0
    llm_replies: int = 0  # replies the brain finished
    llm_replies_without_usage: int = 0  # of those, replies whose provider reported no usage


AnalysisStatus = Literal["pending", "done", "failed", "none"]


class CallAnalysis(msgspec.Struct, kw_only=True):
    """The post-call analysis the brain writes after the hang-up (services/brain/analysis.py).
    `pending` from the call's end until the brain answered (the record is written at the
    end without waiting for it); then `done`, or `failed` with `error`; `none` when the
    agent asks for no analysis. The `call.ended` webhook waits until it is not pending."""

    status: AnalysisStatus
    summary: str = ""
    fields: dict[str, FieldValue] = {}  # the agent's `[analysis.fields]`, each null when the call did not tell
    provider: str = ""  # the brain provider that wrote it (fake, local, openai)
    model: str = ""
    error: str = ""  # why it failed (no brain answered, the model's JSON was outside the schema, ...)
    duration_ms: float = 0.0  # the call's end to the analysis
    usage: LlmUsage | None = None  # the analysis' own tokens (not in costs, which are the call's)


class CallRecord(msgspec.Struct, kw_only=True):
    call_id: str
    call_sid: str
    agent_id: str
    status: CallStatus
    started_at_us: int
    ended_at_us: int = 0
    end_reason: str = ""
    # A transfer's outcome as Twilio's <Dial action> reports it (DialCallStatus: completed,
    # busy, no-answer, failed, canceled), written by the gateway after the call's end.
    transfer_status: str = ""
    from_number: str = ""
    to_number: str = ""
    direction: CallDirection = "inbound"  # records written before it existed were all inbound
    turns: list[TurnRecord] = []
    # Media streams that broke and came back (Twilio's `<Connect action>`, another gateway):
    # the call went on after a gap of silence.
    stream_resumes: int = 0
    # The version of the agent the call ran (its `AGENTS_BUCKET` revision when the call
    # started): an agent edited mid-call changes only later calls. 0: a file agent.
    agent_version: int = 0
    # Twilio's answering-machine verdict (`AnsweredBy`) for an outbound call placed with
    # machine_detection: human, machine_end_beep, machine_end_silence, machine_end_other,
    # fax, unknown. Written by the gateway on the record of a call a machine answered
    # (end_reason "voicemail" or "machine"); empty when detection was off or not recorded.
    answered_by: str = ""
    # The cost drivers: audio seconds, TTS characters, LLM tokens (all 0 in older records).
    costs: CallCosts = msgspec.field(default_factory=CallCosts)
    # The post-call analysis: None while the call goes on (and in older records).
    analysis: CallAnalysis | None = None
    # The call's own variables as POST /v1/calls gave them (voxline/agents/variables.py),
    # for the `{{name}}` placeholders; kept in the record, so in the owner's snapshot too.
    variables: dict[str, str] = {}


# The agents (key = agent id, value = the agent's JSON, `voxline.agents.Agent`), the one
# source of truth every service watches; an entry's revision is the agent's version.
# Written by the gateway's `/v1/agents` API (and seeded from TOML files into an empty bucket).
AGENTS_BUCKET = "voxline_agents"


STREAM_ENDS_BUCKET = "voxline_stream_ends"


class StreamEndRecord(msgspec.Struct, kw_only=True):
    """How a call's media stream ended, kept by the gateway that held it (key = call id) for
    Twilio's `<Connect action>`, which any gateway may receive. Gateways only."""

    code: int = 0  # the WebSocket close code the gateway used; 0 = not closed yet
    reason: str = ""
    transfer_to: str = ""  # a transfer the agent ordered, to dial from the action
    resumes: int = 0  # new streams handed out for this call by `<Connect action>`s


STREAM_TOKENS_BUCKET = "voxline_stream_tokens"


class SpentStreamToken(msgspec.Struct, kw_only=True):
    """A stream token that opened a media stream (key = the token's `jti`), kept until the
    token would have expired anyway: a token replayed by whoever copied it is refused on
    every gateway. Gateways only."""

    call_id: str
    at_us: int


CALL_STREAMS_BUCKET = "voxline_call_streams"


class StreamClaim(msgspec.Struct, kw_only=True):
    """Which media stream a call has now (key = call id): the one whose stream token was
    issued last. A stream with an older token than the claim's is refused; a newer one takes
    the claim and the stream it replaced is closed (`StreamSuperseded`). Gateways only."""

    stream_sid: str
    issued_us: int  # when its stream token was issued (the token's `iat_us`)
    gateway_id: str


API_KEYS_BUCKET = "voxline_api_keys"

ApiScope = Literal["read", "calls", "admin"]


class ApiKeyRecord(msgspec.Struct, kw_only=True):
    """A REST API key, kept under its id in `API_KEYS_BUCKET`: never the key itself, only
    the SHA-256 of it (services/gateway/api_keys.py says why that is enough). Written by
    `voxline keys`, read by every gateway."""

    id: str
    name: str
    scopes: list[ApiScope]
    key_hash: str  # hex SHA-256 of the whole key
    created_at_us: int
    revoked: bool = False
