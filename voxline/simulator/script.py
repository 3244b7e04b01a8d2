"""What a simulated caller does: who calls whom, what they say, and how they misbehave."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxline.simulator.line_noise import LineNoise
from voxline.simulator.twilio_stream import new_sid


@dataclass
class Utterance:
    """One thing the caller says (or keys in).

    `barge_in_after_ms` makes the caller start talking that long after the agent's
    previous reply started playing, instead of politely waiting for it to finish.
    `dtmf` digits are keyed before the speech, one every 200 ms.
    `parts` is one request said in pieces with `gap_ms` of silence between them (a slow
    speaker: "I need to cancel my..." ... "appointment on Tuesday"); a speech recogniser
    sees each piece as an utterance, so the fake STT needs one transcript per part.
    `expects_reply=False` (a backchannel like "uh-huh") waits for the reply being played
    to finish instead of for a new answer.
    `after_keys` makes it an IVR's answer: said once the agent's audio has played these
    keypad keys (DTMF tones, heard by `voxline.simulator.ivr`) since the previous
    utterance, and then paused, instead of after a reply.
    """

    text: str | None = None
    wav: Path | None = None
    pcm8k: np.ndarray | None = None
    pause_ms: int = 300
    barge_in_after_ms: int | None = None
    dtmf: str | None = None
    parts: list[str] | None = None
    gap_ms: int = 700
    expects_reply: bool = True
    after_keys: str | None = None

    @property
    def has_speech(self) -> bool:
        return self.text is not None or self.wav is not None or self.pcm8k is not None or bool(self.parts)

    def transcripts(self) -> list[str]:
        """What a (fake) recogniser should hear, one entry per utterance it will detect."""
        if self.parts:
            return list(self.parts)
        return [self.text] if self.text is not None else []

    def label(self) -> str:
        if self.parts:
            return " ... ".join(self.parts)
        if self.text is not None:
            return self.text
        if self.wav is not None:
            return f"<{self.wav.name}>"
        if self.pcm8k is not None:
            return f"<{len(self.pcm8k) / 8:.0f} ms of audio>"
        return f"<dtmf {self.dtmf}>" if self.dtmf else "<nothing>"


@dataclass
class CallScript:
    agent_id: str = "demo"
    utterances: list[Utterance] = field(default_factory=list)
    call_sid: str | None = None
    account_sid: str | None = None
    from_number: str = "+15005550006"
    to_number: str = "+15005550001"
    # Twilio's `Direction`: `outbound-api` plays the callee's side of a call the API placed.
    direction: str = "inbound"
    stream_token_override: str | None = None
    drop_stream_token: bool = False
    extra_parameters: dict[str, str] = field(default_factory=dict)
    # Per-call variables, in the voice URL as a call placed with `POST /v1/calls` has them.
    variables: dict[str, str] = field(default_factory=dict)
    malformed_frame_after_ms: int | None = None  # ms after stream start
    reply_timeout_s: float = 15.0
    greeting_timeout_s: float = 10.0
    trailing_silence_ms: int = 1000
    # Hang up after `trailing_silence_ms` of the agent's silence rather than that long after the
    # last reply's end: the rest of an answer said after a failover's gap is heard first.
    hang_up_when_quiet: bool = False
    wait_for_greeting: bool = True
    record_timeout_s: float = 5.0
    line_noise: LineNoise | None = None  # noise bursts and the agent's echo on the caller's line

    def __post_init__(self) -> None:
        # Fixed at construction so a result can always be matched to its script.
        if self.call_sid is None:
            self.call_sid = new_sid("CA")
        if self.account_sid is None:
            self.account_sid = new_sid("AC")
