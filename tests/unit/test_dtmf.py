"""send_dtmf: the digits a model may ask for, the keypad tones the gateway plays (through
mu-law, as Twilio carries them) and the Goertzel detector the simulated IVR hears them
with, the tool's schema, and the OpenAI brain's handling of the call against the
chat-completions emulator (official SDK, real socket): the model is told the keys were
sent, the reply ends with the `dtmf` action, and every tool call is reported."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from proto import FrameFlags, subjects
from proto.messages import BrainTurn, ReplyError, ToolCallReport
from services.brain.providers import BrainEvent, ReplyAction, Sentence, ToolCalled
from services.brain.providers.openai_chat import OpenAIChatProvider
from services.brain.worker import BrainWorker
from services.gateway.keypad import keypad_frames
from services.providers import ProviderError
from tests.emulators.openai_chat import DEFAULT_KEY, OpenAiChatEmulator, Reply
from tests.unit.bus_probe import Probe, settle
from voxline.agents.tools import DTMF_SCHEMA, MAX_DTMF_DIGITS, Tool, dtmf_digits
from voxline.audio import (
    DTMF_KEYS,
    DTMF_PAUSE_MS,
    DtmfDetector,
    dtmf_mulaw,
    mulaw_to_pcm16,
    pcm16_to_mulaw,
)
from voxline.bus import Bus
from voxline.config import BrainSettings, OpenAiLlmSettings
from voxline.simulator.ivr import KeypadEar
from voxline.simulator.playback import PlaybackBuffer
from voxline.simulator.voice import synthesize

FRONT_DESK = "+15550100123"
AGENT = f"""
name = "Walker"
greeting = "Hello."
system_prompt = "You call businesses and walk their phone menus."

[[tools]]
name = "press"
description = "Press keys on the phone keypad."
kind = "send_dtmf"

[[tools]]
name = "transfer_to_human"
description = "Transfer the call to the front desk."
kind = "transfer_call"
to = "{FRONT_DESK}"
"""


# --- digits ---------------------------------------------------------------------------


def test_digits_the_model_may_press() -> None:
    assert dtmf_digits("2") == "2"
    assert dtmf_digits("1 2 3 #") == "123#"
    assert dtmf_digits("*0W9") == "*0w9"
    assert dtmf_digits(42) == "42"  # a model that writes a number, not a string
    assert dtmf_digits("1" * MAX_DTMF_DIGITS) == "1" * MAX_DTMF_DIGITS


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("", "no digits"),
        ("   ", "no digits"),
        (None, "must be a string"),
        (True, "must be a string"),
        (["1"], "must be a string"),
        ("1" * (MAX_DTMF_DIGITS + 1), f"at most {MAX_DTMF_DIGITS}"),
        ("12-34", "cannot press '-'"),
        ("A", "cannot press 'A'"),  # the fourth column exists on the line, not on a phone's keypad
        ("two", "cannot press"),
    ],
)
def test_bad_digits_are_refused_with_a_reason(value: object, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        dtmf_digits(value)


def test_the_tool_schema_asks_for_digits_only() -> None:
    tool = Tool(name="press", description="Press keys.", kind="send_dtmf")
    schema = tool.openai_schema()
    assert schema is not None
    assert schema["function"]["name"] == "press"
    assert schema["function"]["parameters"] == DTMF_SCHEMA
    digits = DTMF_SCHEMA["properties"]["digits"]
    assert DTMF_SCHEMA["required"] == ["digits"] and digits["type"] == "string"
    assert digits["pattern"] == f"^[0-9*#w]{{1,{MAX_DTMF_DIGITS}}}$"
    assert tool.spoken_when_silent("Goodbye.") == ""  # keys alone: the line stays quiet, it is an IVR


# --- tones ----------------------------------------------------------------------------

ALL_KEYS = "".join(DTMF_KEYS)


@pytest.mark.parametrize("key", list(ALL_KEYS))
def test_each_key_survives_mulaw_and_is_detected(key: str) -> None:
    detector = DtmfDetector()
    assert detector.feed_mulaw(dtmf_mulaw(key)) == key


def test_a_key_string_in_twilio_frames_is_detected_in_order_once_each() -> None:
    audio = dtmf_mulaw(ALL_KEYS + "w" + "1133")  # repeated keys are separate presses
    detector = DtmfDetector()
    for i in range(0, len(audio), 160):  # 20 ms frames, as media messages carry them
        detector.feed_mulaw(audio[i : i + 160])
    assert detector.digits == ALL_KEYS + "1133"


def test_w_is_a_half_second_of_silence() -> None:
    assert len(dtmf_mulaw("1w2")) - len(dtmf_mulaw("12")) == 8 * DTMF_PAUSE_MS
    with pytest.raises(ValueError):
        dtmf_mulaw("1x")


def test_speech_and_noise_are_not_keys() -> None:
    detector = DtmfDetector()
    detector.feed_mulaw(pcm16_to_mulaw(synthesize("For billing press two. For sales, press three.")))
    rng = np.random.default_rng(7)
    detector.feed(rng.normal(0, 3000, 16000).clip(-32768, 32767).astype(np.int16))
    assert detector.digits == ""


def test_keys_under_line_noise_are_still_detected() -> None:
    tones = mulaw_to_pcm16(dtmf_mulaw("159#")).astype(np.float64)
    noisy = tones + np.random.default_rng(3).normal(0, 1000, tones.size)
    detector = DtmfDetector()
    detector.feed_mulaw(pcm16_to_mulaw(noisy.clip(-32768, 32767).astype(np.int16)))
    assert detector.digits == "159#"


# --- the brain ------------------------------------------------------------------------


@pytest.fixture
def chat() -> Iterator[OpenAiChatEmulator]:
    emulator = OpenAiChatEmulator().start()
    yield emulator
    emulator.stop()


@pytest.fixture
def agents(tmp_path: Path) -> Path:
    (tmp_path / "walker.toml").write_text(AGENT)
    return tmp_path


async def reply(chat: OpenAiChatEmulator, agents: Path) -> list[BrainEvent]:
    endpoint = OpenAiLlmSettings(base_url=chat.base_url, api_key=SecretStr(DEFAULT_KEY), model="gpt-4o")
    provider = OpenAIChatProvider(BrainSettings(openai=endpoint, agents_dir=str(agents)), name="openai")
    turn = BrainTurn(
        call_id="c1", turn_id=1, agent_id="walker", history=[], user_text="For billing press 2.", requested_at_us=0
    )
    try:
        return [event async for event in provider.stream(turn)]
    finally:
        await provider.close()


def reports(events: list[BrainEvent]) -> list[ToolCallReport]:
    return [e.report for e in events if isinstance(e, ToolCalled)]


async def test_send_dtmf_tells_the_model_the_keys_were_sent_and_ends_the_reply_with_them(
    chat: OpenAiChatEmulator, agents: Path
) -> None:
    chat.replies = [Reply(tool_calls=[("press", {"digits": "2"})]), Reply("")]
    events = await reply(chat, agents)
    assert events[-1] == ReplyAction("dtmf", "2")
    assert not [e for e in events if isinstance(e, Sentence)]  # nothing said to the IVR
    told = chat.requests[1].messages[-1]
    assert told["role"] == "tool" and json.loads(told["content"])["status"] == "sent"
    assert json.loads(told["content"])["digits"] == "2"
    (report,) = reports(events)
    assert (report.name, report.kind, report.arguments) == ("press", "send_dtmf", '{"digits": "2"}')
    assert json.loads(report.result)["digits"] == "2" and not report.error and not report.refused
    assert report.duration_ms >= 0 and report.at_us > 0


async def test_bad_digits_go_back_to_the_model_which_tries_again(chat: OpenAiChatEmulator, agents: Path) -> None:
    chat.replies = [
        Reply(tool_calls=[("press", {"digits": "two"})]),
        Reply(tool_calls=[("press", {"digits": "2"})]),
        Reply(""),
    ]
    events = await reply(chat, agents)
    assert events[-1] == ReplyAction("dtmf", "2")
    told = json.loads(chat.requests[1].messages[-1]["content"])
    assert "cannot press" in told["error"]
    bad, good = reports(events)
    assert bad.refused and "cannot press" in bad.error and not bad.result
    assert good.arguments == '{"digits": "2"}' and not good.refused


async def test_one_send_dtmf_per_reply_and_no_transfer_after_keys(chat: OpenAiChatEmulator, agents: Path) -> None:
    chat.replies = [
        Reply(tool_calls=[("press", {"digits": "1"}), ("press", {"digits": "9"})]),
        Reply(tool_calls=[("transfer_to_human", {})]),
        Reply("One moment."),
    ]
    events = await reply(chat, agents)
    assert events[-1] == ReplyAction("dtmf", "1")
    first, second, transfer = reports(events)
    assert not first.refused and second.refused and "already pressed" in second.error
    assert transfer.kind == "transfer_call" and transfer.refused and "next reply" in transfer.error


async def test_a_transfer_is_reported_with_its_action_and_an_unknown_tool_with_its_error(
    chat: OpenAiChatEmulator, agents: Path
) -> None:
    chat.replies = [
        Reply(tool_calls=[("fly_to_the_moon", {"when": "now"})]),
        Reply("Connecting you.", tool_calls=[("transfer_to_human", {})]),
    ]
    events = await reply(chat, agents)
    assert events[-1] == ReplyAction("transfer", FRONT_DESK)
    unknown, transfer = reports(events)
    assert unknown.kind == "" and unknown.error == "no tool named fly_to_the_moon" and not unknown.refused
    assert unknown.arguments == '{"when": "now"}'
    assert json.loads(transfer.result) == {"action": "transfer", "to": FRONT_DESK}


# --- the gateway ----------------------------------------------------------------------


def test_the_gateway_plays_each_key_as_a_marked_chunk_and_closes_the_turn() -> None:
    frames = keypad_frames(7, "2w*")
    assert [(f.turn_id, f.seq, f.chunk) for f in frames] == [(7, 0, 0), (7, 0, 1), (7, 0, 2)]
    assert [f.flags for f in frames] == [
        FrameFlags.NONE,
        FrameFlags.NONE,
        FrameFlags.END_OF_SENTENCE | FrameFlags.END_OF_TURN,
    ]
    detector = DtmfDetector()
    for frame in frames:
        detector.feed_mulaw(frame.payload)
    assert detector.digits == "2*"


def test_keys_the_gateway_cannot_play_still_end_the_turn() -> None:
    (frame,) = keypad_frames(7, "2x")
    assert frame.payload == b"" and frame.flags == FrameFlags.END_OF_SENTENCE | FrameFlags.END_OF_TURN


# --- the simulated IVR ----------------------------------------------------------------


def test_the_ivr_counts_a_key_once_its_audio_was_played_and_not_if_it_was_cleared() -> None:
    now = [0.0]
    playback = PlaybackBuffer(lambda: now[0])
    ear = KeypadEar()
    for key in "12":
        payload = dtmf_mulaw(key)
        ear.heard(playback.add_audio(payload), payload)
    assert ear.pressed(now[0]) == ""  # queued in Twilio's buffer, not played yet
    now[0] = 0.17  # the first key and its gap played
    assert ear.pressed(now[0]) == "1"
    playback.clear()  # the second key's audio thrown away mid-tone
    now[0] = 1.0
    assert ear.pressed(now[0]) == "1"


# --- the brain worker -----------------------------------------------------------------


class _ToolThenFailure:
    """A provider whose webhook ran, then whose model failed (no retry: heard nothing yet)."""

    name = "scripted"

    async def stream(self, turn: BrainTurn) -> AsyncIterator[BrainEvent]:
        yield ToolCalled(LOOKUP)
        raise ProviderError("scripted", "bad_request", "the model refused")

    async def load(self) -> None:
        pass

    async def close(self) -> None:
        pass


LOOKUP = ToolCallReport(name="lookup", kind="webhook", arguments='{"name": "Ana"}', result="{}", at_us=1)


async def test_the_worker_reports_tool_calls_of_a_reply_that_failed(worker_bus: Bus, probe: Probe) -> None:
    worker = BrainWorker(worker_bus, BrainSettings(), _ToolThenFailure())  # type: ignore[arg-type]
    await worker.start()
    await settle(worker_bus)
    turn = BrainTurn(call_id="c1", turn_id=1, agent_id="demo", history=[], user_text="Hi", requested_at_us=0)
    await probe.publish(subjects.BRAIN_TURN, turn)
    [error] = await probe.wait_for(ReplyError)
    assert error.tool_calls == [LOOKUP] and "refused" in error.message
    await worker.stop()
