"""Fake brain: a fixed, deterministic answer generated word by word at a configured
time-to-first-token and token rate, so latency and barge-in behave like a real LLM's;
each sentence is given out as soon as the splitter knows it is complete. Its post-call
analysis is as fake and says so (services/brain/analysis.py `fake_analysis`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from proto.messages import AnalysisRequest, AnalysisResult, BrainTurn
from services.brain.analysis import fake_analysis
from services.brain.providers.base import BrainEvent, FirstToken, Sentence
from services.brain.sentences import SentenceSplitter
from voxline.config import BrainSettings
from voxline.telemetry import now_us

AGENT_LINE = "This is the Voxline test agent answering your call."
REPROMPT = "Sorry, I did not catch that. Could you say it again, please?"


def fake_reply(user_text: str) -> str:
    """The whole reply; the caller's own punctuation is dropped so it reads as one sentence."""
    said = user_text.strip().rstrip(".!?,;: ")
    if not said:
        return REPROMPT
    return f"You said: {said}. {AGENT_LINE}"


class FakeBrainProvider:
    name = "fake"

    def __init__(self, settings: BrainSettings) -> None:
        self.ttft_s = settings.fake_ttft_ms / 1000
        self.token_gap_s = 1 / settings.fake_tokens_per_s if settings.fake_tokens_per_s > 0 else 0.0
        self.analysis_s = settings.fake_analysis_ms / 1000

    async def stream(self, turn: BrainTurn) -> AsyncIterator[BrainEvent]:
        words = fake_reply(turn.user_text).split(" ")
        splitter = SentenceSplitter()
        await asyncio.sleep(self.ttft_s)
        yield FirstToken(now_us())
        for i, word in enumerate(words):
            if i:
                await asyncio.sleep(self.token_gap_s)
            for sentence in splitter.feed(word if i == len(words) - 1 else word + " "):
                yield Sentence(sentence)
        for sentence in splitter.flush():
            yield Sentence(sentence)

    async def analyse(self, request: AnalysisRequest) -> AnalysisResult:
        """A post-call analysis that says it is fake: the caller's lines, every field null."""
        await asyncio.sleep(self.analysis_s)
        return fake_analysis(request)

    async def load(self) -> None:
        pass  # nothing to load

    async def close(self) -> None:
        pass
