"""The binary audio frame header (proto/audio_frame.py) on any bytes off the bus: an
AudioFrame or ValueError, nothing else; and every frame the header can express reads back
as it was written."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proto.audio_frame import HEADER_SIZE, VERSION, AudioFrame, FrameFlags
from tests.fuzz.harness import Count, assert_clean, batch_settings, bounded, pytest_timeout_s, run_target

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(pytest_timeout_s())]

U16 = st.integers(0, 0xFFFF)
FRAMES = st.one_of(
    st.binary(max_size=2 * HEADER_SIZE),
    st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE + 400),
    # Our own version byte in front of anything: past the version check, into the fields.
    st.binary(min_size=HEADER_SIZE - 1, max_size=HEADER_SIZE + 400).map(lambda b: bytes([VERSION]) + b),
    st.builds(bytearray, st.binary(max_size=HEADER_SIZE + 40)),
    st.binary(max_size=HEADER_SIZE + 40).map(lambda b: memoryview(b)),
)


def decode_batch(count: Count, examples: int) -> Callable[[], None]:
    @batch_settings(examples)
    @given(FRAMES)
    def prop(data: bytes | bytearray | memoryview) -> None:
        with count.trying(bytes(data)), bounded(1.0):
            try:
                frame = AudioFrame.decode(data)  # type: ignore[arg-type]  # the bus hands bytes; views too
            except ValueError:
                return
            assert isinstance(frame.payload, bytes) and len(frame.payload) == len(data) - HEADER_SIZE
            assert frame.encode() == bytes(data)  # nothing in the header is lost or changed

    return prop


def roundtrip_batch(count: Count, examples: int) -> Callable[[], None]:
    @batch_settings(examples)
    @given(
        st.binary(max_size=400),
        st.integers(0, 2**32 - 1),
        U16,
        U16,
        st.integers(0, 0xFF).map(FrameFlags),
        st.integers(0, 2**64 - 1),
        U16,
    )
    def prop(payload: bytes, turn_id: int, seq: int, chunk: int, flags: FrameFlags, ts: int, attempt: int) -> None:
        frame = AudioFrame(payload, turn_id, seq, chunk, flags, ts, attempt)
        with count.trying(frame):
            assert AudioFrame.decode(frame.encode()) == frame

    return prop


def test_fuzz_audio_frame_decode() -> None:
    assert_clean(run_target("audio frame decode", decode_batch))


def test_fuzz_audio_frame_roundtrip() -> None:
    assert_clean(run_target("audio frame roundtrip", roundtrip_batch))
