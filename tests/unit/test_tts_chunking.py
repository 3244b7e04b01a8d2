"""Re-chunking of provider audio, frame flags, and the fake TTS signal."""

from __future__ import annotations

import pytest

from proto.audio_frame import FrameFlags
from proto.messages import Synthesize
from services.tts.providers import make_provider
from services.tts.providers.fake import _WAVES, fake_speech
from services.tts.worker import Chunker, chunk_bytes_for, frame_flags
from voxline.config import TtsSettings


def rechunk(pieces: list[bytes], chunk_bytes: int = 800) -> list[bytes]:
    chunker = Chunker(chunk_bytes)
    chunks: list[bytes] = []
    for piece in pieces:
        chunks += chunker.push(piece)
    return [*chunks, chunker.finish()]


def test_chunk_size_follows_the_setting() -> None:
    assert chunk_bytes_for(100) == 800
    assert chunk_bytes_for(20) == 160


@pytest.mark.parametrize(
    "sizes",
    [[1600], [3, 797, 1, 799, 400], [1] * 2000, [801, 801, 801], [5000], [799]],
)
def test_chunks_are_full_except_the_last_and_lose_nothing(sizes: list[int]) -> None:
    audio = bytes(i % 256 for i in range(sum(sizes)))
    pieces, offset = [], 0
    for size in sizes:
        pieces.append(audio[offset : offset + size])
        offset += size
    chunks = rechunk(pieces)
    assert b"".join(chunks) == audio
    assert all(len(c) == 800 for c in chunks[:-1])
    assert 0 < len(chunks[-1]) <= 800


def test_a_full_chunk_waits_for_one_more_byte_so_the_last_one_is_known() -> None:
    chunker = Chunker(800)
    assert chunker.push(b"\x01" * 800) == []
    assert chunker.push(b"\x02") == [b"\x01" * 800]
    assert chunker.finish() == b"\x02"


def test_audio_ending_on_a_chunk_boundary_needs_no_empty_frame() -> None:
    chunks = rechunk([b"\x00" * 1600])
    assert [len(c) for c in chunks] == [800, 800]


def test_no_audio_gives_one_empty_last_chunk() -> None:
    assert rechunk([]) == [b""]
    assert rechunk([b"", b""]) == [b""]


def request(last: bool = False, greeting: bool = False) -> Synthesize:
    return Synthesize(call_id="c1", turn_id=1, seq=0, text="hi", last=last, greeting=greeting, requested_at_us=0)


def test_flags() -> None:
    assert frame_flags(request(), last_chunk=False) == FrameFlags.NONE
    assert frame_flags(request(), last_chunk=True) == FrameFlags.END_OF_SENTENCE
    assert frame_flags(request(last=True), last_chunk=False) == FrameFlags.NONE
    assert frame_flags(request(last=True), last_chunk=True) == FrameFlags.END_OF_SENTENCE | FrameFlags.END_OF_TURN
    assert frame_flags(request(greeting=True), last_chunk=False) == FrameFlags.GREETING
    assert (
        frame_flags(request(last=True, greeting=True), last_chunk=True)
        == FrameFlags.GREETING | FrameFlags.END_OF_SENTENCE | FrameFlags.END_OF_TURN
    )


def test_fake_speech_length_follows_the_text() -> None:
    text = "Thanks for calling, how can I help you today?"
    audio = fake_speech(text, ms_per_char=55.0)
    assert len(audio) == round(len(text) * 55.0 * 8)
    assert fake_speech(text, 55.0) == audio
    assert fake_speech("", 55.0) == b""


def test_fake_speech_changes_pitch_between_words() -> None:
    words = "one two three four five six seven eight".split()
    audio = fake_speech(" ".join(words), ms_per_char=50.0)
    pitches, offset = set(), 0
    for i, word in enumerate(words):
        size = round((len(word) + (1 if i < len(words) - 1 else 0)) * 400)
        segment = audio[offset : offset + size]
        offset += size
        pitches |= {hz for hz, wave in _WAVES.items() if wave.startswith(segment)}
    assert len(pitches) > 1


def test_words_longer_than_the_cached_wave_loop_it() -> None:
    audio = fake_speech("x" * 40, ms_per_char=55.0)  # 2.2 s, the cache holds 1 s
    assert len(audio) == 40 * 55 * 8


@pytest.mark.asyncio
async def test_fake_provider_streams_the_whole_sentence_in_pieces() -> None:
    provider = make_provider("fake", TtsSettings(fake_ttfb_ms=0, fake_ms_per_char=55.0))
    text = "We are open from nine to five."
    pieces = [p async for p in provider.synthesize(text, voice="")]
    assert b"".join(pieces) == fake_speech(text, 55.0)
    assert len(pieces) > 1 and all(len(p) <= 1600 for p in pieces)
