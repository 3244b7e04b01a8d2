"""The plots are written and non-empty; their look is checked by eye, not by tests."""

from __future__ import annotations

from pathlib import Path

from voxline.bench.metrics import summarize
from voxline.bench.plots import plot_cdfs, plot_waterfall, waterfall_bars
from voxline.simulator.results import CallResult, TurnResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LATENCY = {
    "end_of_turn": 250.0,
    "stt_final": 200.0,
    "llm_first_token": 150.0,
    "llm_first_sentence": 270.0,
    "tts_first_audio": 60.0,
    "first_media_sent": 585.0,
    "pipeline_overhead": 4.0,
}


def test_cdf_png_is_written(tmp_path: Path) -> None:
    rows = []
    for level in (1, 10):
        calls = [
            CallResult(call_sid="CA", turns=[TurnResult(0, "q", first_media_latency_ms=500.0 + i)]) for i in range(5)
        ]
        rows.append(summarize("turns", level, calls, []))
    rows.append(summarize("barge_in", 1, [], []))  # a panel with no data still draws
    path = plot_cdfs(rows, tmp_path / "cdf.png")
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def test_waterfall_png_is_written(tmp_path: Path) -> None:
    path = plot_waterfall(LATENCY, tmp_path / "w.png", "one turn", heard_ms=560.0)
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def test_waterfall_lays_a_normal_turn_forward_and_a_preemptive_one_back_from_first_media() -> None:
    forward = {label: (start, length) for label, start, length in waterfall_bars(LATENCY)}
    assert forward["LLM first sentence"] == (250.0, 270.0)
    assert forward["TTS first audio"] == (520.0, 60.0)
    back = {label: (start, length) for label, start, length in waterfall_bars(LATENCY, preemptive=True)}
    assert back["LLM first sentence (preemptive)"] == (255.0, 270.0)  # 585 - 60 - 270
    assert back["TTS first audio"][0] + back["TTS first audio"][1] == LATENCY["first_media_sent"]
