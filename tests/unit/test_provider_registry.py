"""The one registry shape of stt, brain and tts providers: every name imports, the
profile picks the default, chains only where a fallback makes sense."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY as METRICS

from services.brain.providers import REGISTRY as BRAIN
from services.brain.providers import FallbackBrainProvider
from services.providers import ProviderUnavailable, Registry
from services.stt.providers import REGISTRY as STT
from services.tts.providers import REGISTRY as TTS
from services.tts.providers import FallbackTtsProvider
from voxline.config import BrainSettings, SttSettings, TtsSettings


@pytest.mark.parametrize("registry", [STT, BRAIN, TTS], ids=lambda r: r.kind)
def test_every_provider_name_imports_a_factory(registry: Registry[Any, Any]) -> None:
    for name in registry.factories:
        assert callable(registry.factory(name).target()), name
    assert registry.resolve("", "cloud") == registry.cloud


def test_the_profile_picks_the_provider_and_unknown_names_fail_at_startup() -> None:
    assert STT.make("", SttSettings(profile="fake")).name == "fake"
    assert TTS.make(" FAKE ", TtsSettings(profile="local")).name == "fake"
    with pytest.raises(ProviderUnavailable, match="choose one of fake, local, elevenlabs, openai"):
        TTS.make("polly", TtsSettings())


def test_a_comma_list_is_a_fallback_chain_where_one_makes_sense() -> None:
    chain = TTS.make("fake,fake", TtsSettings())
    assert isinstance(chain, FallbackTtsProvider) and chain.name == "fake,fake"
    assert isinstance(BRAIN.make("fake,fake", BrainSettings()), FallbackBrainProvider)
    assert not isinstance(BRAIN.make("fake", BrainSettings()), FallbackBrainProvider)
    with pytest.raises(ProviderUnavailable, match="one provider"):
        STT.make("fake,fake", SttSettings())


def test_every_error_series_of_a_made_provider_exists_at_zero() -> None:
    TTS.make("fake", TtsSettings())
    for kind in ("auth", "rate_limited", "server", "timeout", "dropped", "bad_request", "internal"):
        labels = {"provider": "fake", "kind": kind}
        assert METRICS.get_sample_value("voxline_provider_errors_total", labels) is not None, kind
