"""Settings from environment variables: one typed object per service, defaults documented.

Every setting is `VOXLINE_<NAME>` unless a provider's own convention is stronger
(`TWILIO_AUTH_TOKEN`). `voxline settings` prints every object with its defaults.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Literal

from pydantic import AliasChoices, Field
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

    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server URL (the dev stack sets it).")
    profile: Profile = Field(DEFAULT_PROFILE, description="Provider set: fake, local (offline models) or cloud.")
    log_level: str = Field("INFO", description="Python log level.")
    log_format: Literal["json", "text"] = Field("json", description="json for machines, text for people.")
    health_host: str = Field("127.0.0.1", description="Bind address of /healthz, /readyz, /metrics.")
    instance_id: str = Field(default_factory=_default_instance_id, description="Names this worker on the bus.")


class GatewaySettings(CommonSettings):
    http_host: str = Field("127.0.0.1", description="Gateway bind address.")
    http_port: int = Field(8080, description="Gateway port: Twilio webhook, media WebSocket, REST, metrics.")
    public_url: str = Field("", description="Public https:// base URL Twilio reaches; ws(s) URLs derive from it.")
    stream_token_secret: str = Field(
        "", description="HMAC key for stream tokens; random per process when empty (single gateway only)."
    )
    stream_token_ttl_s: int = Field(60, description="How long Twilio has to open the media stream after the webhook.")
    agents_dir: str = Field("", description="Directory of agent TOML files; the bundled agents when empty.")
    call_start_timeout_s: float = Field(2.0, description="How long to wait for an orchestrator to own a new call.")
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
    api_key: str = Field(
        "", description="When set, every /v1/* request needs 'Authorization: Bearer <key>' (401 otherwise)."
    )


class WorkerSettings(CommonSettings):
    health_port: int = Field(0, description="Port of /healthz, /readyz, /metrics (0 = pick a free one).")


class OrchestratorSettings(WorkerSettings):
    agents_dir: str = Field("", description="Directory of agent TOML files; the bundled agents when empty.")
    stt_assign_timeout_s: float = Field(1.0, description="How long to wait for an STT worker to take a call.")
    history_turns: int = Field(20, description="Conversation turns sent to the brain.")
    brain_timeout_s: float = Field(
        8.0, description="No reply sentence this long after a request: apologise (a brain worker died or hangs)."
    )
    tts_timeout_s: float = Field(
        5.0, description="No synthesis result this long after a request: ask another TTS worker once, then skip."
    )


class SttSettings(WorkerSettings):
    stt_provider: str = Field("", description="fake | local | deepgram; empty = the profile's choice.")
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
    deepgram_api_key: str = Field(
        "",
        validation_alias=AliasChoices("VOXLINE_DEEPGRAM_API_KEY", "DEEPGRAM_API_KEY"),
        description="Deepgram: API key (sent as 'Authorization: Token', never logged).",
    )
    deepgram_url: str = Field(
        "wss://api.deepgram.com", description="Deepgram: WebSocket base URL (/v1/listen is appended)."
    )
    deepgram_model: str = Field(
        "nova-3", description="Deepgram: model, nova-3 (agent keywords sent as keyterm) or nova-2 (as keywords)."
    )
    deepgram_endpointing_ms: int = Field(
        300, description="Deepgram: silence after speech that makes a result speech_final (ends the caller's turn)."
    )
    deepgram_utterance_end_ms: int = Field(
        1000, description="Deepgram: word gap that sends UtteranceEnd, the fallback end of turn in noise."
    )
    deepgram_early_pause_ms: int = Field(
        80,
        description="Deepgram: quiet this long, with interim text covering every word, sends SpeechPaused "
        "(a preemptive reply starts before the final); 0 = off.",
    )
    deepgram_connect_timeout_s: float = Field(3.0, description="Deepgram: handshake timeout of one connection attempt.")
    deepgram_stall_timeout_s: float = Field(
        5.0, description="Deepgram: audio flowing this long with no message back counts as a stall: reconnect."
    )
    deepgram_keepalive_s: float = Field(
        5.0, description="Deepgram: KeepAlive after this long without audio (idle sockets close at 10 s)."
    )
    deepgram_max_retries: int = Field(
        6, description="Deepgram: failed connects in a row (backoff 0.1 s doubling, max 2 s) before SttError."
    )
    deepgram_replay_max_s: float = Field(
        30.0, description="Deepgram: most unacknowledged audio kept for replay after a reconnect (oldest dropped)."
    )


class BrainSettings(WorkerSettings):
    brain_provider: str = Field("", description="fake | local | openai; empty = the profile's choice.")
    fake_ttft_ms: int = Field(150, description="Fake brain: time to first token.")
    fake_tokens_per_s: float = Field(50.0, description="Fake brain: streaming rate after the first token.")
    brain_stall_timeout_s: float = Field(
        10.0, description="A provider silent this long (before or between tokens) fails the turn with a ReplyError."
    )
    llm_base_url: str = Field(
        "", description="OpenAI-compatible endpoint; empty = api.openai.com (the dev stack sets its llama-server)."
    )
    llm_api_key: str = Field(
        "sk-no-key",
        validation_alias=AliasChoices("VOXLINE_LLM_API_KEY", "OPENAI_API_KEY"),
        description="API key of the endpoint; llama-server ignores it.",
    )
    llm_model: str = Field("local", description="Model name sent to the endpoint (llama-server ignores it).")
    llm_temperature: float = Field(0.2, description="Sampling temperature; low keeps a small model on the facts.")
    llm_max_tokens: int = Field(80, description="Cap on reply tokens; the reply is cut after two sentences anyway.")
    llm_timeout_s: float = Field(20.0, description="HTTP timeout of one completion request.")
    llm_warmup_agents: str = Field(
        "demo", description="Comma-separated agents whose system prompt is pre-filled into the LLM cache at start."
    )
    agents_dir: str = Field("", description="Directory of agent TOML files; the bundled agents when empty.")
    openai_api_key: str = Field(
        "",
        validation_alias=AliasChoices("VOXLINE_OPENAI_API_KEY", "OPENAI_API_KEY"),
        description="Brain 'openai': API key of the endpoint (sent as a bearer token, never logged).",
    )
    openai_base_url: str = Field(
        "", description="Brain 'openai': any OpenAI-compatible base URL (Groq, vLLM, Azure v1); empty = OpenAI."
    )
    openai_model: str = Field("gpt-4o", description="Brain 'openai': model name sent to the endpoint.")
    openai_timeout_s: float = Field(
        5.0, description="Brain 'openai': connect timeout, and longest wait for the next streamed byte (a stall)."
    )
    brain_attempts: int = Field(
        2, description="Tries per brain provider on 429/5xx/dropped stream, before the reply's first words."
    )
    brain_retry_backoff_s: float = Field(0.25, description="Wait before a brain retry, doubled per try.")
    brain_retry_budget_s: float = Field(
        1.5, description="No retry or fallback starts later than this after the turn arrived (the caller waits)."
    )
    knowledge_top_k: int = Field(3, description="Knowledge paragraphs put into the system prompt per turn.")
    tool_rounds: int = Field(3, description="Most webhook tool calls the model may chain within one reply.")


class TtsSettings(WorkerSettings):
    tts_provider: str = Field(
        "",
        description="fake | local | elevenlabs | openai, or a fallback chain like elevenlabs,openai; empty = profile.",
    )
    tts_chunk_ms: int = Field(100, description="Reply audio chunk length; one Twilio mark follows each chunk.")
    fake_ttfb_ms: int = Field(60, description="Fake TTS: time to first audio byte.")
    fake_ms_per_char: float = Field(55.0, description="Fake TTS: audio length per character of text.")
    tts_stall_timeout_s: float = Field(
        5.0, description="A provider silent this long fails the sentence: TtsError, and the sentence is closed."
    )
    piper_threads: int = Field(2, description="Local TTS: onnxruntime threads of the Piper voice.")
    piper_length_scale: float = Field(1.0, description="Local TTS: speaking pace (above 1 is slower).")
    tts_provider_attempts: int = Field(
        2, description="Tries per provider on 429/5xx/dropped socket before the next provider in the chain."
    )
    tts_retry_backoff_s: float = Field(0.2, description="Wait before a retry, doubled per try (the caller is waiting).")
    elevenlabs_api_key: str = Field(
        "",
        validation_alias=AliasChoices("ELEVENLABS_API_KEY", "VOXLINE_ELEVENLABS_API_KEY"),
        description="ElevenLabs: API key (sent as the xi-api-key header, never logged).",
    )
    elevenlabs_base_url: str = Field("wss://api.elevenlabs.io", description="ElevenLabs: WebSocket base URL.")
    elevenlabs_model: str = Field("eleven_flash_v2_5", description="ElevenLabs: model id (Flash is the fastest).")
    elevenlabs_voice_id: str = Field(
        "21m00Tcm4TlvDq8ikWAM", description="ElevenLabs: voice used when the agent names none (or a non-id)."
    )
    elevenlabs_stability: float = Field(0.5, description="ElevenLabs: voice_settings.stability.")
    elevenlabs_similarity_boost: float = Field(0.75, description="ElevenLabs: voice_settings.similarity_boost.")
    elevenlabs_chunk_schedule: str = Field(
        "50,90,120,150", description="ElevenLabs: generation_config.chunk_length_schedule, comma-separated."
    )
    elevenlabs_timeout_s: float = Field(
        2.0, description="ElevenLabs: handshake, first audio and gap between audio messages before a timeout error."
    )
    elevenlabs_warm_sockets: int = Field(
        1, description="ElevenLabs: sockets kept open and initialised per voice, so no sentence waits on a handshake."
    )
    elevenlabs_socket_max_idle_s: float = Field(
        15.0, description="ElevenLabs: a warm socket older than this is replaced (the server closes idle ones at 20 s)."
    )
    openai_tts_api_key: str = Field(
        "",
        validation_alias=AliasChoices("VOXLINE_OPENAI_TTS_API_KEY", "OPENAI_API_KEY"),
        description="OpenAI TTS: API key (never logged).",
    )
    openai_tts_base_url: str = Field("", description="OpenAI TTS: API base URL; empty = api.openai.com.")
    openai_tts_model: str = Field("gpt-4o-mini-tts", description="OpenAI TTS: gpt-4o-mini-tts, tts-1 or tts-1-hd.")
    openai_tts_voice: str = Field("alloy", description="OpenAI TTS: voice used when the agent names none it knows.")
    openai_tts_instructions: str = Field("", description="OpenAI TTS: speaking style (gpt-4o-mini-tts only).")
    openai_tts_timeout_s: float = Field(
        2.0, description="OpenAI TTS: connect, first audio and gap between audio pieces before a timeout error."
    )


class LlmServerSettings(CommonSettings):
    """The local llama-server the dev stack runs for profile local."""

    models_dir: str = Field("", description="Where the assembled GGUF is cached; var/models when empty.")
    llm_server_port: int = Field(0, description="llama-server port (0 = pick a free one).")
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
