"""Message types of the bus contract, version 1 (msgspec, JSON on the wire).

Every message carries `call_id`; everything that belongs to a reply carries `turn_id`.
Times are wall-clock microseconds (`*_us`) stamped where the event happened, so the
orchestrator can break a turn's latency down per stage without trusting any one clock
more than the host's.
"""

from __future__ import annotations

from typing import Literal

import msgspec

# The closed vocabularies of the contract: a value outside them fails decoding on arrival
# instead of surprising a `match` three services later.
TurnKind = Literal["greeting", "reply", "apology", "reprompt", "goodbye", "failure", "dtmf"]
"""What a turn of the agent is: the opening line, an answer from the brain, the apology
for a failed answer, the prompt to a silent caller, the goodbye before an idle hang-up,
the last words before a hang-up on an unrecoverable failure, the keypad tones a reply's
`send_dtmf` tool call ordered (played after that reply, as a turn of their own)."""
AgentAction = Literal["", "hangup", "transfer", "dtmf"]
"""What to do once the reply was heard: nothing, hang up, transfer to `action_arg`, or
play the DTMF digits in `action_arg` (0-9 * #, `w` a half-second pause)."""
ChatRole = Literal["system", "user", "assistant"]


class _Msg(msgspec.Struct, tag=True, kw_only=True, frozen=True):
    call_id: str


class Order(_Msg, kw_only=True, frozen=True):
    """An order of the call's owner. `epoch` is the owner's ownership epoch
    (proto/ownership.py): a gateway or worker that has seen a newer epoch for the call drops
    the order, so an owner that comes back from a pause or a partition cannot act on a call
    that was taken over meanwhile. 0: not fenced."""

    epoch: int = 0


# --- call lifecycle -------------------------------------------------------------------

# Who placed the call: a caller dialled our number, or we dialled out (`POST /v1/calls`;
# Twilio's `Direction` is then `outbound-api`).
CallDirection = Literal["inbound", "outbound"]


class CallStart(_Msg, kw_only=True, frozen=True):
    """gateway -> orchestrator (request): a media stream started; someone must own the call."""

    agent_id: str
    stream_sid: str
    call_sid: str
    from_number: str = ""
    to_number: str = ""
    direction: CallDirection = "inbound"
    custom_parameters: dict[str, str] = {}
    # The call's own variables (POST /v1/calls `variables`, voxline/agents/variables.py):
    # caller data for the prompt's placeholders, never logged. Not in custom_parameters.
    variables: dict[str, str] = {}
    started_at_us: int
    gateway_id: str = ""  # the gateway instance holding the stream: the owner pings it


class CallAccepted(_Msg, kw_only=True, frozen=True):
    """orchestrator -> gateway (reply): the call is owned by `orchestrator_id`."""

    orchestrator_id: str


class CallRefused(_Msg, kw_only=True, frozen=True):
    """orchestrator -> gateway (reply): the call cannot go on (unknown agent, no STT worker).
    `busy`: for lack of capacity (no worker had room): the caller hears the agent's busy
    message instead of its failure message."""

    reason: str
    busy: bool = False


class CallEnded(_Msg, kw_only=True, frozen=True):
    """orchestrator -> everyone (broadcast): free every per-call resource."""

    reason: str


class Hangup(Order, kw_only=True, frozen=True):
    """orchestrator -> gateway: end the media stream (after the last audio was heard)."""

    reason: str


# --- speech to text -------------------------------------------------------------------


class SttAssign(_Msg, kw_only=True, frozen=True):
    """orchestrator -> stt (request): subscribe to this call's audio until CallEnded."""

    agent_id: str
    language: str = "en"
    keywords: list[str] = []
    custom_parameters: dict[str, str] = {}
    pause_ms: int = 0  # report the end of speech after this much silence; 0 = provider default
    # The caller audio after this time (gateway clock, µs) was heard by no transcript: the
    # worker fetches it from the gateway (CallerAudioRequest) before the live audio. 0: none.
    audio_since_us: int = 0
    # Final transcripts the call had before this assignment: a provider that numbers the
    # caller's utterances (the fake one's script) goes on from there on a moved call.
    finals_heard: int = 0


class SttRelease(_Msg, kw_only=True, frozen=True):
    """orchestrator -> one stt worker (subjects.stt_release): drop the call's session and
    audio; the call goes on with another worker."""

    reason: str


class SttReplay(_Msg, kw_only=True, frozen=True):
    """orchestrator -> the call's stt worker (subjects.stt_replay): publish again, on the
    call's stt subject, the call's events newer than `since_us`. A new owner resumed the
    call from a snapshot; what the caller said after it went to the dead owner."""

    since_us: int


class CallerAudioRequest(_Msg, kw_only=True, frozen=True):
    """stt -> the call's gateway (request on subjects.caller_audio): the caller audio it
    still holds that arrived after `since_us`."""

    since_us: int


class CallerAudio(_Msg, kw_only=True, frozen=True):
    """gateway -> stt (reply): encoded caller AudioFrames (seq, arrival time), oldest first;
    the gateway keeps the last few seconds of each call."""

    frames: list[bytes]


class SttAssigned(_Msg, kw_only=True, frozen=True):
    worker_id: str
    provider: str


class SpeechStarted(_Msg, kw_only=True, frozen=True):
    at_us: int


class Transcript(_Msg, kw_only=True, frozen=True):
    text: str
    is_final: bool
    at_us: int
    provider_ms: float = 0.0  # the provider's own processing time for this result


class SpeechEnded(_Msg, kw_only=True, frozen=True):
    """The caller stopped speaking; `speech_end_us` is the end of the speech itself,
    `at_us` when the silence that confirmed it had elapsed."""

    at_us: int
    speech_end_us: int
    # The acoustic end-of-turn model's probability that the caller has finished (Smart
    # Turn on the utterance's audio); -1 when the provider has no such model.
    end_of_turn_probability: float = -1.0


class SpeechPaused(_Msg, kw_only=True, frozen=True):
    """The caller went quiet and the recogniser's interim text already covers all they
    said: a preemptive reply may start on `text` before the final transcript (which
    follows, or a SpeechStarted if the caller goes on). Sent by streaming recognisers
    that have interim results (Deepgram); `speech_end_us` is where the quiet began."""

    at_us: int
    speech_end_us: int
    text: str


class SttError(_Msg, kw_only=True, frozen=True):
    message: str


# --- brain ----------------------------------------------------------------------------


class ChatTurn(msgspec.Struct, frozen=True):
    role: ChatRole
    content: str


class BrainTurn(Order, kw_only=True, frozen=True):
    """orchestrator -> brain: answer the caller."""

    turn_id: int
    agent_id: str
    agent_version: int = 0  # the agent as the call started (0: its latest, a file agent)
    history: list[ChatTurn]
    user_text: str
    requested_at_us: int
    # The orchestrator's try at this turn: 0 first, 1 when the worker that had it fell
    # silent (no ReplyProgress for the orchestrator's brain_timeout_s: it died) and another
    # was asked. Every reply message echoes it; replies of an older try are dropped.
    attempt: int = 0
    # What the system prompt's `{{name}}` placeholders are filled with: the agent's
    # default_variables, the call's variables and the built-ins, merged by the orchestrator
    # (voxline/agents/variables.py). Caller data: never logged.
    variables: dict[str, str] = {}


class ReplyProgress(_Msg, kw_only=True, frozen=True):
    """brain -> orchestrator: a worker holds the turn. Sent as it takes the turn, then every
    `brain_heartbeat_s` until the turn's end, so the orchestrator tells a worker that died
    (kill -9, a lost host) from a provider slow to its first words within a couple of
    seconds, instead of waiting out the whole reply budget in silence."""

    turn_id: int
    attempt: int = 0
    worker_id: str = ""
    at_us: int


class ReplySentence(_Msg, kw_only=True, frozen=True):
    """brain -> orchestrator: one speakable sentence of the reply, in order (`seq` from 0)."""

    turn_id: int
    seq: int
    text: str
    at_us: int
    first_token_us: int = 0
    provider_ms: float = 0.0  # the provider's own time from the request's arrival to this sentence
    attempt: int = 0  # BrainTurn.attempt, echoed


class LlmUsage(msgspec.Struct, kw_only=True, frozen=True):
    """Tokens an LLM provider reported for a reply (every round of it, retries included)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


class ToolCallReport(msgspec.Struct, kw_only=True, frozen=True):
    """One tool call the model made for a reply, as the brain ran it (or refused it).
    `arguments` is the model's JSON text as it came (it may not even parse), and may hold
    the caller's own data: it belongs in the call record, never in a log."""

    name: str
    kind: str = ""  # the tool's kind (transfer_call, end_call, webhook, send_dtmf); "" for no such tool
    arguments: str = ""
    result: str = ""  # what the model was told (a webhook's body), or the action ordered
    error: str = ""  # why it failed or was refused, as the model was told
    refused: bool = False  # not done on purpose: a transfer outside the allowlist, bad digits
    duration_ms: float = 0.0
    at_us: int = 0  # when it finished


class ReplyDone(_Msg, kw_only=True, frozen=True):
    turn_id: int
    attempt: int = 0  # BrainTurn.attempt, echoed
    sentences: int
    at_us: int
    action: AgentAction = ""
    action_arg: str = ""
    # None: the provider reported no usage (the fake brain; a stream closed before its
    # usage chunk, as when the reply was full or the turn cancelled). Older brains send none.
    usage: LlmUsage | None = None
    # The reply's tool calls in the order they ran (every round and try); a reply cancelled
    # before its end reports none.
    tool_calls: list[ToolCallReport] = []


class ReplyError(_Msg, kw_only=True, frozen=True):
    turn_id: int
    message: str
    attempt: int = 0  # BrainTurn.attempt, echoed
    # Tool calls run before the failure (a webhook that was called, then the model failed):
    # they happened, so they go into the record like ReplyDone's.
    tool_calls: list[ToolCallReport] = []


# --- post-call analysis ---------------------------------------------------------------

AnalysisFieldType = Literal["string", "number", "integer", "boolean"]
Speaker = Literal["caller", "agent"]
FieldValue = str | int | float | bool | None


class AnalysisField(msgspec.Struct, kw_only=True, frozen=True):
    """One structured field the agent's analysis asks for (a JSON-schema property: the
    agent's `[analysis.fields.<name>]`, voxline/agents/analysis.py validates it). Every
    field may come back null: the model says so when the call did not tell."""

    type: AnalysisFieldType
    description: str = ""
    enum: list[str | int | float] | None = None


class TranscriptLine(msgspec.Struct, kw_only=True, frozen=True):
    speaker: Speaker
    text: str
    turn_id: int = 0


class AnalysisRequest(_Msg, kw_only=True, frozen=True):
    """orchestrator -> brain (request on BRAIN_ANALYSE, queue group brain), after the call
    ended: write the summary and the fields. Answered with AnalysisResult within
    `timeout_ms` (the orchestrator stops waiting then and records a failure)."""

    agent_id: str
    agent_version: int = 0
    lines: list[TranscriptLine]
    summary: bool = True
    fields: dict[str, AnalysisField] = {}
    instructions: str = ""  # the agent's own words on what to look for
    end_reason: str = ""
    timeout_ms: int
    requested_at_us: int


class AnalysisResult(_Msg, kw_only=True, frozen=True):
    """brain -> orchestrator (reply): `failed` with `error` when the model gave no valid
    answer (an endpoint error, JSON outside the schema, a refusal); never a crash."""

    status: Literal["done", "failed"]
    summary: str = ""
    fields: dict[str, FieldValue] = {}
    provider: str = ""
    model: str = ""
    error: str = ""
    usage: LlmUsage | None = None


# --- text to speech -------------------------------------------------------------------


class Synthesize(Order, kw_only=True, frozen=True):
    """orchestrator -> tts: speak one sentence; audio goes to the call's audio.out subject."""

    turn_id: int
    seq: int
    text: str
    voice: str = ""
    last: bool = False
    greeting: bool = False
    requested_at_us: int
    # 0 for the first request of this sentence, then 1, 2 ... for each retry or skip after a
    # watchdog fired; echoed in every AudioFrame so the gateway plays only the newest.
    attempt: int = 0


class SentenceSynthesized(_Msg, kw_only=True, frozen=True):
    turn_id: int
    seq: int
    audio_ms: float
    first_audio_us: int
    at_us: int
    provider_ttfb_ms: float = 0.0  # the provider's own time to its first audio byte
    attempt: int = 0


class SynthesisProgress(_Msg, kw_only=True, frozen=True):
    """tts -> orchestrator: a sentence's audio is flowing. Sent with its first chunk, then
    with a chunk at most every `tts_progress_interval_s` (a few a second per sentence in
    synthesis, not one per chunk), so the orchestrator's watchdog follows the next chunk:
    a worker that dies mid-sentence is noticed `tts_progress_timeout_s` after its last
    report, however long the sentence."""

    turn_id: int
    seq: int
    attempt: int = 0
    chunks: int  # chunks of the sentence published so far
    at_us: int
    worker_id: str = ""  # which TTS worker: the one to look at when progress stops


class TtsError(_Msg, kw_only=True, frozen=True):
    turn_id: int
    seq: int
    message: str
    attempt: int = 0


# --- gateway events -------------------------------------------------------------------


class MarkPlayed(_Msg, kw_only=True, frozen=True):
    """gateway -> orchestrator: the caller heard audio up to this mark: Twilio echoed it, or,
    at a `clear` (after which echoes cannot tell played from flushed), the gateway estimated
    playback had reached it (`end_ms` then may fall inside the chunk, closing nothing)."""

    turn_id: int
    seq: int
    chunk: int
    end_ms: int
    sentence_end: bool
    turn_end: bool
    at_us: int


class ReplyAudioSent(_Msg, kw_only=True, frozen=True):
    """gateway -> orchestrator: the first media message of a turn left for Twilio."""

    turn_id: int
    at_us: int


class Dtmf(_Msg, kw_only=True, frozen=True):
    digit: str
    at_us: int


class CallStopped(_Msg, kw_only=True, frozen=True):
    """gateway -> orchestrator: the media stream ended (caller hung up or Hangup done).

    `lost`: the stream broke without Twilio's `stop` (or its gateway died): the caller may
    still be on the line, and Twilio comes back through the `<Connect action>` with a new
    stream on any gateway (`StreamResume`), so the owner waits a while before ending."""

    reason: str
    at_us: int
    lost: bool = False
    stream_sid: str = ""  # which stream: the end of one replaced by a resumed stream is old news


class StreamResume(_Msg, kw_only=True, frozen=True):
    """gateway -> the call's owner (request on `stream_resume(call_id)`): a new media stream
    of a call whose stream broke; the call goes on through `gateway_id`. Answered with
    `CallAccepted`, or `CallRefused` when the call cannot go on."""

    stream_sid: str
    gateway_id: str
    at_us: int


class StreamSuperseded(_Msg, kw_only=True, frozen=True):
    """gateway -> gateways (on `stream_superseded(call_id)`): a newer media stream took the
    call (a `<Connect action>` hand-over, or a second stream with a newer token); whichever
    gateway holds an older stream of the call closes it, so a call never has two."""

    stream_sid: str  # the stream that took the call
    issued_us: int  # when its stream token was issued


class Transfer(Order, kw_only=True, frozen=True):
    """orchestrator -> gateway: hand the caller to a human at `to` (Twilio `<Dial>` through
    the REST API), after the agent's last words were heard."""

    to: str
    reason: str = ""


class SendDtmf(Order, kw_only=True, frozen=True):
    """orchestrator -> gateway: play `digits` as in-band DTMF tones (ITU-T Q.23 pairs) as
    the audio of turn `turn_id`, marked like reply audio, after the reply that ordered them
    was heard. Twilio's bidirectional Media Streams accept only media, mark and clear from
    us (no message sends digits), so the tones are audio."""

    turn_id: int
    digits: str


class PlaybackPause(Order, kw_only=True, frozen=True):
    """orchestrator -> gateway: the caller started talking over the reply. Stop the voice now
    (`clear`) but keep what was not heard, because it may be a backchannel."""

    turn_id: int
    at_us: int


class PlaybackResume(Order, kw_only=True, frozen=True):
    """orchestrator -> gateway: it was a backchannel or noise; play on from the last chunk
    Twilio confirmed, nothing skipped."""

    turn_id: int
    at_us: int


class TurnCancel(Order, kw_only=True, frozen=True):
    """orchestrator -> brain, tts, gateway: drop everything of this turn (and older)."""

    turn_id: int
    reason: str
    at_us: int


Message = (
    CallStart
    | CallAccepted
    | CallRefused
    | CallEnded
    | Hangup
    | SttAssign
    | SttAssigned
    | SttRelease
    | SttReplay
    | CallerAudioRequest
    | CallerAudio
    | SpeechStarted
    | Transcript
    | SpeechEnded
    | SpeechPaused
    | SttError
    | BrainTurn
    | ReplyProgress
    | ReplySentence
    | ReplyDone
    | ReplyError
    | Synthesize
    | SentenceSynthesized
    | SynthesisProgress
    | TtsError
    | MarkPlayed
    | ReplyAudioSent
    | Dtmf
    | CallStopped
    | StreamResume
    | StreamSuperseded
    | TurnCancel
    | PlaybackPause
    | PlaybackResume
    | Transfer
    | SendDtmf
    | AnalysisRequest
    | AnalysisResult
)
