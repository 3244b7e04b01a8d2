"""The gateway's last seconds of caller audio, for a new STT worker to catch up on."""

from __future__ import annotations

from proto.audio_frame import AudioFrame
from services.gateway.caller_audio import CallerAudioHistory


def test_frames_after_a_time_oldest_first_and_only_the_last_seconds() -> None:
    history = CallerAudioHistory(keep_s=0.1)  # 5 frames of 20 ms
    for n in range(8):
        history.add(AudioFrame(bytes([n]) * 160, seq=n, timestamp_us=1_000 * n))
    frames = [AudioFrame.decode(f) for f in history.since(4_000)]
    assert [f.seq for f in frames] == [5, 6, 7]
    assert frames[0].payload == bytes([5]) * 160 and frames[0].timestamp_us == 5_000
    assert [AudioFrame.decode(f).seq for f in history.since(0)] == [3, 4, 5, 6, 7]  # 0..2 are gone
