"""Provider settings live with their provider, under its own env prefix: the variables
users set keep working, keys stay out of every repr, and one provider's key never
configures another."""

from __future__ import annotations

import pytest

from services.brain.providers import FallbackBrainProvider, make_provider
from services.brain.providers.openai_chat import OpenAIChatProvider
from voxline.config import BrainSettings, SttSettings, TtsSettings, documented

CLOUD_KEY = "sk-proj-cloudkey0123456789abcdef"
KEYS = {
    "OPENAI_API_KEY": CLOUD_KEY,
    "DEEPGRAM_API_KEY": "dg-key-0123456789",
    "ELEVENLABS_API_KEY": "el-key-0123456789",
    "VOXLINE_LLM_API_KEY": "llm-key-0123456789",
}


async def test_the_openai_key_is_not_sent_to_the_local_llm_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CLOUD_KEY)
    monkeypatch.setenv("VOXLINE_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.delenv("VOXLINE_LLM_API_KEY", raising=False)
    monkeypatch.delenv("VOXLINE_OPENAI_API_KEY", raising=False)
    settings = BrainSettings()
    local, cloud = make_provider("local", settings), make_provider("openai,local", settings)
    try:
        assert isinstance(local, OpenAIChatProvider)
        assert local.client.api_key == "sk-no-key"
        assert isinstance(cloud, FallbackBrainProvider)
        openai = cloud.providers[0]
        assert isinstance(openai, OpenAIChatProvider) and openai.client.api_key == CLOUD_KEY
    finally:
        await local.close()
        await cloud.close()


def test_the_variables_users_set_reach_their_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        **KEYS,
        "VOXLINE_OPENAI_MODEL": "gpt-4o-mini",
        "VOXLINE_LLM_WARMUP_AGENTS": "demo,clinic",
        "VOXLINE_DEEPGRAM_EARLY_PAUSE_MS": "0",
        "VOXLINE_ELEVENLABS_VOICE_ID": "voice0123456789abcdef",
        "VOXLINE_OPENAI_TTS_MODEL": "tts-1",
        "VOXLINE_PIPER_THREADS": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    brain, stt, tts = BrainSettings(), SttSettings(), TtsSettings()
    assert brain.openai.api_key.get_secret_value() == CLOUD_KEY and brain.openai.model == "gpt-4o-mini"
    assert brain.llm.api_key.get_secret_value() == KEYS["VOXLINE_LLM_API_KEY"]
    assert brain.llm.warmup_agents == "demo,clinic" and brain.llm.model == "local"
    assert stt.deepgram.api_key.get_secret_value() == KEYS["DEEPGRAM_API_KEY"] and stt.deepgram.early_pause_ms == 0
    assert tts.elevenlabs.api_key.get_secret_value() == KEYS["ELEVENLABS_API_KEY"]
    assert tts.elevenlabs.voice_id == "voice0123456789abcdef" and tts.piper.threads == 1
    assert tts.openai_tts.api_key.get_secret_value() == CLOUD_KEY and tts.openai_tts.model == "tts-1"
    assert brain.openai.model != tts.openai_tts.model  # VOXLINE_OPENAI_TTS_* is not VOXLINE_OPENAI_*


def test_keys_never_show_in_a_repr_or_a_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    for settings in (BrainSettings(), SttSettings(), TtsSettings()):
        shown = repr(settings) + str(settings) + settings.model_dump_json()
        for key in KEYS.values():
            assert key not in shown


def test_every_provider_variable_is_documented_under_its_own_name() -> None:
    """What `voxline settings` prints: each variable a user may set, never a nested blob,
    and a key's default as '(secret)'."""
    rows = {env: default for cls in (SttSettings, BrainSettings, TtsSettings) for env, default, _ in documented(cls)}
    for env in ("VOXLINE_LLM_BASE_URL", "VOXLINE_OPENAI_MODEL", "VOXLINE_DEEPGRAM_EARLY_PAUSE_MS"):
        assert env in rows
    assert rows["VOXLINE_LLM_API_KEY"] == rows["VOXLINE_OPENAI_API_KEY | OPENAI_API_KEY"] == "(secret)"
    assert not {"VOXLINE_LLM", "VOXLINE_OPENAI", "VOXLINE_DEEPGRAM", "VOXLINE_ELEVENLABS"} & set(rows)
