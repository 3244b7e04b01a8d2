"""Deepgram live STT (Nova) through the official SDK (deepgram-sdk 7, the generated client).

One WebSocket per call, opened when the call is assigned, so the first turn pays no
handshake. The caller's 8 kHz mu-law goes out as is. Deepgram's events become ours:
SpeechStarted at once (it drives barge-in), interim Results as partial transcripts, is_final
Results accumulate until speech_final (or UtteranceEnd when no speech_final came), which
ends the utterance: SpeechEnded, then the final Transcript.

A socket that drops, stalls or is refused with 429/5xx is replaced with backoff, and the
audio Deepgram had not finalized is sent again first (see deepgram_ledger), so the caller's
words survive. 401/403 and 400 are not retried. A fatal error is reported as one SttError on
the call's stt subject; if it happens before the first audio frame it waits for that frame,
because the orchestrator subscribes to the call's events only after the assignment.
"""

from __future__ import annotations

import time
from typing import Any

from deepgram import AsyncDeepgramClient
from deepgram.environment import DeepgramClientEnvironment

from proto.messages import SttAssign
from services.providers import ProviderError, ProviderUnavailable
from services.stt.providers.base import Emit
from services.stt.providers.deepgram_session import PROVIDER, DeepgramSession
from voxline.config import SttSettings

AUTH_HOLD_S = 60.0  # after a refused key, new sessions fail at once instead of dialling again


class DeepgramSttProvider:
    name = PROVIDER

    def __init__(self, settings: SttSettings) -> None:
        if not settings.deepgram.api_key.get_secret_value():
            raise ProviderUnavailable("stt provider deepgram needs an API key (DEEPGRAM_API_KEY)")
        self.settings = settings
        ws = settings.deepgram.url.rstrip("/")
        http = ws.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
        env = DeepgramClientEnvironment(base=http, production=ws, agent=ws, agent_rest=http)
        self.client = AsyncDeepgramClient(api_key=settings.deepgram.api_key.get_secret_value(), environment=env)
        self._auth_refused_at: float | None = None

    def connect_params(self, assign: SttAssign) -> dict[str, Any]:
        """Query parameters of /v1/listen: the orchestrator's pause_ms as endpointing when set,
        agent keywords as keyterm phrases (Nova-3) or single-word keywords (Nova-2)."""
        s = self.settings.deepgram
        params: dict[str, Any] = {
            "model": s.model,
            "encoding": "mulaw",
            "sample_rate": 8000,
            "channels": 1,
            "interim_results": True,
            "endpointing": assign.pause_ms if assign.pause_ms > 0 else s.endpointing_ms,
            "utterance_end_ms": s.utterance_end_ms,
            "vad_events": True,
            "smart_format": True,
        }
        if assign.language:
            params["language"] = assign.language
        phrases = [k.strip() for k in assign.keywords if k.strip()]
        if phrases and s.model.startswith("nova-3"):
            params["keyterm"] = phrases  # Nova-3 keyterm prompting takes phrases
        elif phrases:
            # Keywords (Nova-2 and older) boost single words: a phrase goes out as its words.
            # https://developers.deepgram.com/docs/keywords
            params["keywords"] = list(dict.fromkeys(word for phrase in phrases for word in phrase.split()))
        return params

    async def open(self, assign: SttAssign, emit: Emit) -> DeepgramSession:
        """Start connecting and return at once (the assignment must be answered quickly);
        fail at once while the key was refused recently, so that a reassignment of a call
        whose session hit 401 ends in the orchestrator's polite hang-up, not in a loop."""
        refused = self._auth_refused_at
        if refused is not None and time.monotonic() - refused < AUTH_HOLD_S:
            ago = time.monotonic() - refused
            raise ProviderError(PROVIDER, "auth", f"API key refused {ago:.0f}s ago; not retried yet", 401)
        session = DeepgramSession(assign.call_id, self.client, self.connect_params(assign), self.settings, emit)
        session.on_auth_refused = self._note_auth_refused
        session.start()
        return session

    def _note_auth_refused(self) -> None:
        self._auth_refused_at = time.monotonic()

    async def load(self) -> None:
        pass  # a socket per call, opened when the call is assigned

    async def close(self) -> None:
        pass  # sessions own their sockets; the SDK's idle HTTP client holds nothing open
