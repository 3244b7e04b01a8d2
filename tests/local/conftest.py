"""One stack on the real offline models (Whisper, Silero, llama-server, Piper) for every
test here: loading and warming them is the slow part, so it happens once per session."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from services.stt.providers.local import LocalSttProvider
from services.tts.providers.piper import PiperTtsProvider
from voxline.audio import mulaw_to_pcm16
from voxline.config import SttSettings, TtsSettings
from voxline.devstack import DevStack, free_port

# The LLM is sampled greedily here so a test run is repeatable.
STACK_ENV = {"VOXLINE_LOG_LEVEL": "INFO", "VOXLINE_LLM_TEMPERATURE": "0"}


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    logs = tmp_path_factory.mktemp("local-logs")
    stack = DevStack(
        profile="local",
        http_port=free_port(),
        data_dir=tmp_path_factory.mktemp("local-nats"),
        log_dir=logs,
        extra_env=STACK_ENV,
        verbose=False,
    )
    try:
        stack.start(timeout=300)
    except Exception:
        stack.stop()
        for f in sorted(Path(logs).glob("*.log")):
            print(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}")
        raise
    yield stack
    stack.stop()
    if os.environ.get("VOXLINE_KEEP_LOGS"):
        print(f"service logs in {logs}")


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def whisper() -> AsyncIterator[LocalSttProvider]:
    """The same Whisper the STT worker runs, in the test process, to listen to replies."""
    provider = LocalSttProvider(SttSettings())
    await provider.load()
    yield provider
    await provider.close()


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def piper() -> AsyncIterator[PiperTtsProvider]:
    provider = PiperTtsProvider(TtsSettings())
    await provider.load()
    yield provider
    await provider.close()


async def speak(piper: PiperTtsProvider, text: str) -> np.ndarray:
    """`text` in Piper's voice as 8 kHz int16, for words espeak-ng says too badly for
    tiny.en ("Cigna" comes out as "signal" or worse)."""
    audio = b"".join([piece async for piece in piper.synthesize(text, "")])
    return mulaw_to_pcm16(audio)
