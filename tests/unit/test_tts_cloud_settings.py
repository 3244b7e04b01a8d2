"""Cloud TTS settings the providers' documentation constrains, against the emulators over
real sockets: OpenAI's voices per speech model, and ElevenLabs' `inactivity_timeout`,
which decides how long a warm socket may wait for a sentence."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
from pydantic import SecretStr
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.providers import ProviderUnavailable
from services.tts.providers import elevenlabs as elevenlabs_module
from services.tts.providers.elevenlabs import ElevenLabsTtsProvider
from services.tts.providers.openai_tts import OpenAiTtsProvider
from tests.emulators.elevenlabs import DEFAULT_KEY as EL_KEY
from tests.emulators.elevenlabs import ElevenLabsEmulator
from tests.emulators.openai_speech import DEFAULT_KEY as OA_KEY
from tests.emulators.openai_speech import OpenAiSpeechEmulator
from tests.integration.conftest import wait_until
from voxline.config import ElevenLabsSettings, OpenAiTtsSettings, TtsSettings


@pytest.fixture
def oa() -> Iterator[OpenAiSpeechEmulator]:
    emulator = OpenAiSpeechEmulator().start()
    yield emulator
    emulator.stop()


@pytest.fixture
def el() -> Iterator[ElevenLabsEmulator]:
    emulator = ElevenLabsEmulator().start()
    yield emulator
    emulator.stop()


def openai_settings(oa: OpenAiSpeechEmulator, model: str, voice: str) -> TtsSettings:
    endpoint = OpenAiTtsSettings(api_key=SecretStr(OA_KEY), base_url=oa.base_url, model=model, voice=voice)
    return TtsSettings(openai_tts=endpoint)


async def speak(provider: object, text: str, voice: str = "") -> bytes:
    assert isinstance(provider, (OpenAiTtsProvider, ElevenLabsTtsProvider))
    return b"".join([piece async for piece in provider.synthesize(text, voice)])


# --- OpenAI: voices per model -----------------------------------------------------------


async def test_the_speech_emulator_refuses_a_voice_the_model_does_not_have(oa: OpenAiSpeechEmulator) -> None:
    """What the live API does, so the provider is tested against it."""
    headers = {"Authorization": f"Bearer {OA_KEY}"}
    async with httpx.AsyncClient(base_url=oa.base_url, headers=headers) as client:
        for model, voice, status in [("tts-1", "marin", 400), ("tts-1-hd", "ballad", 400), ("tts-1", "sage", 200)]:
            body = {"model": model, "voice": voice, "input": "Hello.", "response_format": "pcm"}
            answer = await client.post("/audio/speech", json=body)
            assert answer.status_code == status, (model, voice)
        answer = await client.post("/audio/speech", json={**body, "model": "gpt-4o-mini-tts", "voice": "cedar"})
        assert answer.status_code == 200
    assert oa.requests[0].status == 400


def test_a_voice_the_openai_model_lacks_is_refused_at_start_with_the_voices_it_has(
    oa: OpenAiSpeechEmulator,
) -> None:
    with pytest.raises(ProviderUnavailable) as refused:
        OpenAiTtsProvider(openai_settings(oa, "tts-1", "marin"))
    message = str(refused.value)
    assert "tts-1" in message and "'marin'" in message and "VOXLINE_OPENAI_TTS_VOICE" in message
    assert "alloy, ash, coral, echo, fable, nova, onyx, sage, shimmer" in message


async def test_an_agent_voice_the_model_lacks_falls_back_to_the_configured_voice(oa: OpenAiSpeechEmulator) -> None:
    provider = OpenAiTtsProvider(openai_settings(oa, "tts-1", "coral"))
    try:
        assert await speak(provider, "Hello.", voice="verse")  # verse: gpt-4o-mini-tts only
        assert await speak(provider, "Hello.", voice="sage")
    finally:
        await provider.close()
    assert [(r.body["voice"], r.status) for r in oa.requests] == [("coral", 200), ("sage", 200)]


# --- ElevenLabs: inactivity_timeout -----------------------------------------------------


async def idle_close(el: ElevenLabsEmulator, query: str) -> tuple[int, str, dict[str, object]]:
    """Open a socket, initialise it, send nothing more: how the server ends it."""
    url = f"{el.url}/v1/text-to-speech/voice0123456789abcdef/stream-input?model_id=eleven_flash_v2_5{query}"
    async with connect(url, additional_headers={"xi-api-key": EL_KEY}) as ws:
        await ws.send(json.dumps({"text": " "}))
        said = json.loads(await ws.recv())
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason, said


async def test_the_emulator_closes_an_idle_socket_after_its_inactivity_timeout(el: ElevenLabsEmulator) -> None:
    el.second = 0.01  # a documented second lasts 10 ms here
    code, reason, said = await idle_close(el, "")
    assert code == 1008 and reason.startswith("Have not received a new text input within the timeout of 20.0 seconds")
    assert said["error"] == "input_timeout_exceeded" and len(reason.encode()) <= 123
    code, reason, _ = await idle_close(el, "&inactivity_timeout=180")
    assert code == 1008 and "timeout of 180.0 seconds" in reason
    assert [s.timed_out for s in el.sessions] == [True, True]
    with pytest.raises(InvalidStatus) as refused:
        await idle_close(el, "&inactivity_timeout=181")
    assert refused.value.response.status_code == 400


def el_settings(el: ElevenLabsEmulator) -> TtsSettings:
    endpoint = ElevenLabsSettings(api_key=SecretStr(EL_KEY), base_url=el.url, warm_sockets=1)
    return TtsSettings(elevenlabs=endpoint)


async def test_a_warm_socket_waits_out_a_quiet_minute_of_the_call(
    el: ElevenLabsEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller talks for a minute: the socket opened for the next sentence must still be
    the one used, not thrown away and replaced every 10 s as under the 20 s default."""
    later = {"s": 0.0}
    clock = SimpleNamespace(monotonic=lambda: time.monotonic() + later["s"])
    monkeypatch.setattr(elevenlabs_module, "time", clock)  # the provider's clock only
    provider = ElevenLabsTtsProvider(el_settings(el))

    async def sessions(count: int) -> bool:
        return len(el.sessions) >= count

    try:
        await provider.load()
        await wait_until(lambda: sessions(1), 5, "the warm socket's session")
        assert el.sessions[0].query["inactivity_timeout"] == "180"
        later["s"] = 60.0
        assert await speak(provider, "We open at nine.")
        assert el.text_sessions() == [el.sessions[0]]  # the warm socket: no handshake on the caller's time
        await wait_until(lambda: sessions(2), 5, "the refilled socket's session")
        later["s"] += 175.0  # past what the server allows even at 180 s: that socket is never used
        assert await speak(provider, "Goodbye.")
        first, second = el.text_sessions()
        assert first is el.sessions[0] and second is not el.sessions[1]
    finally:
        await provider.close()
