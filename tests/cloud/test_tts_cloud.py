"""Cloud TTS (ElevenLabs stream-input, OpenAI speech) against local emulators of their wire
protocols: first the providers and the fallback chain on their own, then whole simulated
calls through the real gateway, services and nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from services.providers import ProviderError
from services.tts.providers import FallbackTtsProvider, make_provider
from tests.cloud.conftest import LogsSince, all_logs, counter_value, metrics, running, start_stack
from tests.emulators.elevenlabs import DEFAULT_KEY as EL_KEY
from tests.emulators.elevenlabs import ElevenLabsEmulator
from tests.emulators.openai_speech import DEFAULT_KEY as OA_KEY
from tests.emulators.openai_speech import OpenAiSpeechEmulator
from tests.integration.conftest import AUTH_TOKEN
from voxline.config import TtsSettings
from voxline.devstack import DevStack
from voxline.simulator import CallResult, CallScript, Utterance, run_call

pytestmark = pytest.mark.integration

WRONG_KEY = "el-wrong-key-0b9d44"
ERRORS = "voxline_provider_errors_total"


@pytest.fixture(scope="module")
def el() -> Iterator[ElevenLabsEmulator]:
    yield from running(ElevenLabsEmulator())


@pytest.fixture(scope="module")
def oa() -> Iterator[OpenAiSpeechEmulator]:
    yield from running(OpenAiSpeechEmulator())


@pytest.fixture(autouse=True)
def fresh_emulators(el: ElevenLabsEmulator, oa: OpenAiSpeechEmulator) -> None:
    el.reset()
    oa.reset()
    el.ms_per_char = oa.ms_per_char = 12  # short replies keep calls quick; playback is real time


def cloud_env(el: ElevenLabsEmulator, oa: OpenAiSpeechEmulator) -> dict[str, str]:
    return {
        "VOXLINE_TTS_PROVIDER": "elevenlabs,openai",
        "ELEVENLABS_API_KEY": EL_KEY,
        "VOXLINE_ELEVENLABS_BASE_URL": el.url,
        "VOXLINE_OPENAI_TTS_API_KEY": OA_KEY,
        "VOXLINE_OPENAI_TTS_BASE_URL": oa.base_url,
        "VOXLINE_ELEVENLABS_TIMEOUT_S": "1.0",
        "VOXLINE_OPENAI_TTS_TIMEOUT_S": "1.0",
    }


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, el: ElevenLabsEmulator, oa: OpenAiSpeechEmulator
) -> Iterator[DevStack]:
    s = start_stack(tmp_path_factory, "tts-cloud", cloud_env(el, oa))
    yield s
    s.stop()


@contextlib.asynccontextmanager
async def tts_with(stack: DevStack, **env: str) -> AsyncIterator[None]:
    """Run the TTS worker with other settings for one test, then as before."""
    proc = stack.processes["tts"]
    saved = dict(proc.env)
    proc.env.update(env)
    await asyncio.to_thread(stack.restart, "tts")
    try:
        yield
    finally:
        proc.env.clear()
        proc.env.update(saved)
        await asyncio.to_thread(stack.restart, "tts")


async def call(stack: DevStack, *texts: str, barge_in_after_ms: int | None = None) -> CallResult:
    utterances = [Utterance(text=t) for t in texts]
    if barge_in_after_ms is not None:
        utterances[-1] = Utterance(text=texts[-1], barge_in_after_ms=barge_in_after_ms)
    script = CallScript(
        utterances=utterances, extra_parameters={"fake_transcripts": "|".join(texts)}, trailing_silence_ms=200
    )
    return await run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN)


def settings(monkeypatch: pytest.MonkeyPatch, el: ElevenLabsEmulator, oa: OpenAiSpeechEmulator) -> TtsSettings:
    for key, value in cloud_env(el, oa).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VOXLINE_TTS_RETRY_BACKOFF_S", "0.05")
    return TtsSettings()


async def speak(provider: object, text: str) -> bytes:
    assert isinstance(provider, FallbackTtsProvider)
    return b"".join([piece async for piece in provider.synthesize(text, "")])


# --- the providers and the chain, in-process over real sockets --------------------------


async def first_audio_ms(provider: object, texts: list[str]) -> list[float]:
    """Time to each sentence's first audio, through the chain as the worker calls it."""
    assert isinstance(provider, FallbackTtsProvider)
    await provider.load()
    times: list[float] = []
    for text in texts:
        started, first = time.monotonic(), 0.0
        async for _ in provider.synthesize(text, ""):
            first = first or (time.monotonic() - started) * 1000
        times.append(first)
    await provider.close()
    return times


async def test_warm_socket_hides_the_handshake(
    monkeypatch: pytest.MonkeyPatch, el: ElevenLabsEmulator, oa: OpenAiSpeechEmulator
) -> None:
    el.handshake_ms, el.ttfb_ms = 100, 100  # a TLS handshake far away, and Flash's published TTFB
    texts = ["Hello, thanks for calling.", "We open at nine.", "Anything else?"]
    warm = await first_audio_ms(make_provider("elevenlabs", settings(monkeypatch, el, oa)), texts)
    monkeypatch.setenv("VOXLINE_ELEVENLABS_WARM_SOCKETS", "0")
    cold = await first_audio_ms(make_provider("elevenlabs", TtsSettings()), texts)
    warm_ms, cold_ms = [round(t) for t in warm], [round(t) for t in cold]
    print(f"\nelevenlabs first audio (ms), sentence 1/2/3: warm {warm_ms}, one cold socket each {cold_ms}")
    assert [len(s.texts) for s in el.text_sessions()] == [1] * 6


async def test_429_and_dropped_socket_are_retried(
    monkeypatch: pytest.MonkeyPatch, el: ElevenLabsEmulator, oa: OpenAiSpeechEmulator
) -> None:
    monkeypatch.setenv("VOXLINE_ELEVENLABS_WARM_SOCKETS", "0")
    provider = make_provider("elevenlabs,openai", settings(monkeypatch, el, oa))
    el.handshake_failures = [429]
    assert len(await speak(provider, "Twelve characters.")) > 0
    el.drop_after_audio = 0  # every socket cut before its first audio: retried, then OpenAI
    audio = await speak(provider, "Still here.")
    assert [r.status for r in oa.requests] == [200] and len(audio) == len("Still here.") * 12 * 8
    assert el.handshakes == [429, 101, 101, 101]
    await provider.close()


async def test_failures_after_audio_began_end_the_sentence_without_repeats(
    monkeypatch: pytest.MonkeyPatch, el: ElevenLabsEmulator, oa: OpenAiSpeechEmulator
) -> None:
    provider = make_provider("elevenlabs,openai", settings(monkeypatch, el, oa))
    el.drop_after_audio = 1
    received: list[bytes] = []
    with pytest.raises(ProviderError) as failure:
        async for piece in provider.synthesize("A sentence long enough for several audio messages.", ""):
            received.append(piece)
    assert failure.value.kind == "dropped" and received and not oa.requests
    await provider.close()


async def test_timeouts_and_server_errors_fall_back_then_fail_clearly(
    monkeypatch: pytest.MonkeyPatch, el: ElevenLabsEmulator, oa: OpenAiSpeechEmulator
) -> None:
    provider = make_provider("elevenlabs,openai", settings(monkeypatch, el, oa))
    el.stall = True
    assert len(await speak(provider, "Stalled.")) == len("Stalled.") * 12 * 8
    assert len(el.text_sessions()) == 1  # a timeout is not retried: the caller already waited
    oa.failures = [500, 500]
    with pytest.raises(ProviderError) as failure:
        await speak(provider, "Nobody can say this.")
    assert (failure.value.provider, failure.value.kind, failure.value.status) == ("openai", "server", 500)
    await provider.close()


# --- whole calls through the stack -------------------------------------------------------


async def test_elevenlabs_turn(stack: DevStack, el: ElevenLabsEmulator, oa: OpenAiSpeechEmulator) -> None:
    result = await call(stack, "what are your opening hours")
    assert result.accepted and not result.errors, result.errors
    assert result.turns[0].completed and result.turns[0].reply_played_ms > 0
    sessions = el.text_sessions()
    reply = [s for s in sessions if "opening hours" in s.texts[0] or "test agent" in s.texts[0]]
    assert len(reply) == 2  # the fake brain's two sentences
    for s in sessions:
        assert s.query == {"model_id": "eleven_flash_v2_5", "output_format": "ulaw_8000", "inactivity_timeout": "180"}
        assert s.key_in_header
        assert s.messages[0]["text"] == " " and s.messages[0]["generation_config"]["chunk_length_schedule"]
        assert [m.get("flush") for m in s.messages[1:]] == [True, None] and s.messages[-1] == {"text": ""}
        assert s.final_sent
    assert not oa.requests


async def test_openai_turn(stack: DevStack, oa: OpenAiSpeechEmulator) -> None:
    async with tts_with(stack, VOXLINE_TTS_PROVIDER="openai"):
        result = await call(stack, "do you take my insurance")
    assert result.accepted and not result.errors, result.errors
    assert result.turns[0].completed and result.turns[0].reply_played_ms > 0
    inputs = [r.body["input"] for r in oa.requests]
    assert any("insurance" in text for text in inputs)
    assert all(r.body["response_format"] == "pcm" and r.body["model"] == "gpt-4o-mini-tts" for r in oa.requests)


async def test_barge_in_closes_the_elevenlabs_stream(stack: DevStack, el: ElevenLabsEmulator) -> None:
    el.realtime, el.ms_per_char = True, 40  # synthesis still running when the caller interrupts
    result = await call(stack, "tell me everything about your clinic", "stop, I have a question", barge_in_after_ms=600)
    assert result.accepted and not result.errors, result.errors
    assert len(result.barge_ins) == 1 and result.barge_ins[0].cancelled_audio_heard_after_ms == 0
    texts = [s.texts[0] for s in el.text_sessions()]
    interrupted = [s for s in el.text_sessions() if s.texts[0] == "You said: tell me everything about your clinic. "]
    assert len(interrupted) == 1, texts
    # We closed the socket mid-stream: no isFinal was ever sent, and no text came after ours.
    assert interrupted[0].client_closed_early and interrupted[0].done
    assert len(interrupted[0].texts) == 1


async def test_bad_elevenlabs_key_falls_back_to_openai(
    stack: DevStack, el: ElevenLabsEmulator, oa: OpenAiSpeechEmulator, new_logs: LogsSince
) -> None:
    async with tts_with(stack, ELEVENLABS_API_KEY=WRONG_KEY):
        result = await call(stack, "what are your opening hours")
        auth_errors = counter_value(await metrics(stack, "tts"), ERRORS, provider="elevenlabs", kind="auth")
    assert result.accepted and not result.errors, result.errors
    assert result.turns[0].completed and result.turns[0].reply_played_ms > 0
    assert 401 in el.handshakes and not el.text_sessions()
    assert any("opening hours" in r.body["input"] for r in oa.requests)
    assert auth_errors >= 2  # the greeting and the reply, at least
    assert "elevenlabs auth (status 401): handshake refused; falling back to openai" in new_logs.of("tts")


async def test_all_providers_failing_every_turn_concludes_then_a_clean_hang_up(
    stack: DevStack, el: ElevenLabsEmulator, oa: OpenAiSpeechEmulator, new_logs: LogsSince
) -> None:
    async with tts_with(stack, VOXLINE_ELEVENLABS_WARM_SOCKETS="0"):
        el.handshake_failures, oa.failures = [503] * 100, [500] * 100
        result = await call(stack, "hello", "are you there")
        text = await metrics(stack, "tts")
    # Nothing can be spoken, yet nothing hangs: each turn is closed and concluded (the worker
    # sends each sentence's closing frame), and after two unspeakable replies in a row (the
    # greeting and the first answer) the orchestrator hangs up rather than keep a silent line.
    assert not result.errors, result.errors
    assert result.closed_by_gateway and result.media_received == 0
    assert any("text to speech unavailable" in note for note in result.notes), result.notes
    assert result.record is not None and result.record["status"] == "ended"
    kinds = [(t["kind"], t["caller_text"]) for t in result.record["turns"]]
    assert kinds[:2] == [("greeting", ""), ("reply", "hello")], kinds
    assert all(not t["heard_text"] for t in result.record["turns"])
    assert counter_value(text, ERRORS, provider="elevenlabs", kind="server") > 0
    assert counter_value(text, ERRORS, provider="openai", kind="server") > 0
    assert "no provider left" in new_logs.of("tts")
    assert "openai server (status 500): request refused" in new_logs.of("orchestrator")  # the TtsError
    assert "replies in a row could not be spoken: hanging up" in new_logs.of("orchestrator")


async def test_keys_never_reach_a_log(
    stack: DevStack, el: ElevenLabsEmulator, oa: OpenAiSpeechEmulator, new_logs: LogsSince
) -> None:
    # Every key in use, a refused one included, within this test: run alone, it must still
    # have had each key sent and refused or accepted (it once relied on earlier tests).
    assert (await call(stack, "hello")).accepted
    async with tts_with(stack, ELEVENLABS_API_KEY=WRONG_KEY):
        assert (await call(stack, "are you there")).accepted
    assert el.text_sessions() and 401 in el.handshakes and oa.requests
    assert "elevenlabs auth (status 401)" in new_logs.of("tts")
    logs = all_logs(stack)
    for key in (EL_KEY, OA_KEY, WRONG_KEY, OA_KEY[-4:] + "."):
        assert key not in logs
