"""The benchmark's callers: each scenario is a CallScript family probing one behaviour.

Calls are kept to a greeting plus one or two turns so that 200 of them at once finish in
about a minute. The fake STT cannot hear words, so every script also carries the
transcripts the recogniser should "hear", one per utterance it will detect, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from voxline.simulator.script import CallScript, Utterance

QUESTION = "what are your opening hours"
FOLLOW_UP = "do you take my insurance"
INTERRUPTION = "actually can I book an appointment for next week instead"
BACKCHANNELS = ("uh-huh", "okay")
SLOW_PARTS = ["I need to cancel my", "appointment on Tuesday"]
SLOW_GAP_MS = 700
# Answers that are over as soon as they are said: each should end its turn after the
# complete-turn silence, not the unfinished-turn one. "Okay." is left out: the bench counts
# "okay" as a backchannel (BACKCHANNELS) and leaves it out of turn latencies.
SHORT_ANSWERS = (
    "No.",
    "Thank you.",
    "Yes please.",
    "What about you?",
    "Nope.",
    "Sure, thanks.",
    "I do.",
    "No, thank you.",
)
BARGE_AFTER_MS = 800  # into the reply: mid first sentence of the fake brain's answer
BACKCHANNEL_AFTER_MS = 1200


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    build: Callable[[int], CallScript]  # call index -> script (index varies the wording)
    cdf_metric: str  # which latency its CDF plot shows: "turn" | "barge_in"


def _script(utterances: list[Utterance]) -> CallScript:
    heard = [t for u in utterances for t in u.transcripts()]
    return CallScript(
        utterances=utterances,
        extra_parameters={"fake_transcripts": "|".join(heard)},
        trailing_silence_ms=300,
        reply_timeout_s=15.0,
        greeting_timeout_s=10.0,
        record_timeout_s=5.0,
    )


def _turns(_: int) -> CallScript:
    return _script([Utterance(text=QUESTION), Utterance(text=FOLLOW_UP)])


def _barge_in(_: int) -> CallScript:
    return _script([Utterance(text=QUESTION), Utterance(text=INTERRUPTION, barge_in_after_ms=BARGE_AFTER_MS)])


def _backchannel(i: int) -> CallScript:
    word = BACKCHANNELS[i % len(BACKCHANNELS)]
    return _script(
        [
            Utterance(text=QUESTION),
            Utterance(text=word, barge_in_after_ms=BACKCHANNEL_AFTER_MS, expects_reply=False),
        ]
    )


def _slow_speaker(_: int) -> CallScript:
    return _script([Utterance(parts=list(SLOW_PARTS), gap_ms=SLOW_GAP_MS)])


def _short_answers(i: int) -> CallScript:
    first, second = (SHORT_ANSWERS[(2 * i + k) % len(SHORT_ANSWERS)] for k in range(2))
    return _script([Utterance(text=first), Utterance(text=second)])


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("turns", "two questions, each answered in full", _turns, "turn"),
        Scenario("barge_in", "a full sentence over the reply, 800 ms in", _barge_in, "barge_in"),
        Scenario("backchannel", '"uh-huh"/"okay" 1.2 s into the reply: pause, resume', _backchannel, "barge_in"),
        Scenario("slow_speaker", "one request in two parts, 700 ms apart", _slow_speaker, "turn"),
        Scenario("short_answers", '"No.", "Thank you.", "Yes please.": answered at once', _short_answers, "turn"),
    ]
}


def _long_call(i: int) -> CallScript:
    """Six questions, a pause after each reply: about half a minute of call, long enough
    for a process to die in the middle of it (`voxline chaos`, `voxline soak`)."""
    questions = [QUESTION, FOLLOW_UP, "where can I park", "how much is a cleaning", "can I pay by card", "thanks"]
    start = i % len(questions)
    script = _script([Utterance(text=q, pause_ms=1500) for q in questions[start:] + questions[:start]])
    script.reply_timeout_s = 30.0  # a reply may wait out a failover
    script.hang_up_when_quiet = True  # and its rest, said after the gap, is heard before hanging up
    return script


# The long runs' callers; not benchmarked by default.
ENDURANCE: dict[str, Scenario] = {
    "long_call": Scenario("long_call", "six questions over about 30 s", _long_call, "turn"),
}


def is_backchannel(text: str) -> bool:
    return text.strip().lower() in BACKCHANNELS
