"""The bus contract round-trips and rejects what is outside it."""

from __future__ import annotations

import msgspec
import pytest

from proto import AudioFrame, FrameFlags, MarkName, decode, encode, subjects
from proto.messages import BrainTurn, ChatTurn, TurnCancel


def test_message_round_trip_keeps_type_and_fields() -> None:
    msg = BrainTurn(
        call_id="CA1", turn_id=4, agent_id="demo", history=[ChatTurn("user", "hi")], user_text="x", requested_at_us=7
    )
    assert decode(encode(msg)) == msg


def test_unknown_or_invalid_messages_are_rejected() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode(b'{"type":"Nope","call_id":"x"}')
    with pytest.raises(msgspec.ValidationError):
        decode(b'{"type":"TurnCancel","call_id":"x","turn_id":"three","reason":"","at_us":1}')
    with pytest.raises(msgspec.DecodeError):
        decode(b"not json")


def test_audio_frame_round_trip_and_bad_frames() -> None:
    frame = AudioFrame(b"\x01\x02", turn_id=3, seq=2, chunk=9, flags=FrameFlags.END_OF_SENTENCE, timestamp_us=5)
    assert AudioFrame.decode(frame.encode()) == frame
    # The synthesis attempt rides in the header (the gateway plays only a sentence's newest).
    retried = AudioFrame(b"\x03", turn_id=3, seq=2, chunk=0, flags=FrameFlags.END_OF_SENTENCE, attempt=2)
    assert AudioFrame.decode(retried.encode()) == retried
    assert AudioFrame.decode(retried.encode()).attempt == 2
    with pytest.raises(ValueError, match="too short"):
        AudioFrame.decode(b"\x01")
    with pytest.raises(ValueError, match="version"):
        AudioFrame.decode(b"\x09" + frame.encode()[1:])


@pytest.mark.parametrize(
    "mark",
    [MarkName(1, 0, 0, 100), MarkName(12, 3, 7, 2500, sentence_end=True), MarkName(2, 1, 4, 80, True, True)],
)
def test_mark_names_round_trip(mark: MarkName) -> None:
    assert MarkName.parse(mark.encode()) == mark


@pytest.mark.parametrize("name", ["", "hello", "t1.s2.c3", "t1.s2.c3.ex", "t1.s2.c3.e4.Q", "a1.s2.c3.e4"])
def test_foreign_mark_names_are_not_ours(name: str) -> None:
    assert MarkName.parse(name) is None


def test_call_subjects_carry_the_call_id() -> None:
    assert subjects.call_id_of(subjects.audio_in("CA42")) == "CA42"
    assert subjects.turn_cancel("CA42").startswith(subjects.PREFIX)
    msg = TurnCancel(call_id="CA42", turn_id=1, reason="barge_in", at_us=1)
    assert decode(encode(msg)).call_id == "CA42"
