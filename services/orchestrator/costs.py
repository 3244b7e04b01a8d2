"""The call's cost drivers (`CallRecord.costs`), counted from what already passes through
the orchestrator: the Synthesize requests it sends, the SentenceSynthesized and ReplyDone
it receives, and the call's start and end. Nothing is asked of a provider for them.

They live in the record, which is part of the call's state: a call taken over by another
orchestrator goes on counting from the snapshot (events handled between the snapshot and
the takeover may count twice; they are seconds of a call, not a bill's worth)."""

from __future__ import annotations

from proto.messages import LlmUsage
from proto.records import CallCosts


def synthesis_requested(costs: CallCosts, text: str) -> None:
    """Text sent to TTS: providers bill the characters of every request, a retry too."""
    costs.tts_characters += len(text)


def audio_synthesized(costs: CallCosts, audio_ms: float) -> None:
    """A sentence's reply audio, made and sent to the caller's gateway."""
    costs.agent_audio_s = round(costs.agent_audio_s + audio_ms / 1000, 3)


def reply_finished(costs: CallCosts, usage: LlmUsage | None) -> None:
    costs.llm_replies += 1
    if usage is None:
        costs.llm_replies_without_usage += 1
        return
    costs.llm_prompt_tokens += usage.prompt_tokens
    costs.llm_completion_tokens += usage.completion_tokens


def call_ended(costs: CallCosts, started_at_us: int, ended_at_us: int) -> None:
    """The media stream's length, its start to the call's end: what the caller's line and
    the streaming recogniser (sent every frame while the call lasts) are billed for. A
    broken stream's gap until Twilio reconnected counts in (`stream_resumes` says if any)."""
    seconds = round(max(0, ended_at_us - started_at_us) / 1_000_000, 3)
    costs.caller_audio_s = seconds
    costs.stt_audio_s = seconds
