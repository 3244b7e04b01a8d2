"""The `voxline` command: one profile rule (`--profile` > `VOXLINE_PROFILE` > the offline
default, and `make run` neither hides nor overrides the variable), and `voxline settings`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from voxline.cli import resolve_profile
from voxline.config import CommonSettings

ROOT = Path(__file__).resolve().parents[2]


def test_the_flag_wins_then_the_variable_then_the_offline_default() -> None:
    assert resolve_profile("fake", {"VOXLINE_PROFILE": "cloud"}) == "fake"
    assert resolve_profile(None, {"VOXLINE_PROFILE": "cloud"}) == "cloud"
    assert resolve_profile(None, {}) == "local"


def test_services_started_without_the_launcher_follow_the_same_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOXLINE_PROFILE", raising=False)
    assert CommonSettings().profile == resolve_profile(None, {})
    monkeypatch.setenv("VOXLINE_PROFILE", "cloud")
    assert CommonSettings().profile == "cloud"


def test_an_unknown_profile_is_a_clear_error() -> None:
    with pytest.raises(SystemExit, match="unknown profile 'clod'"):
        resolve_profile(None, {"VOXLINE_PROFILE": "clod"})


def _make_run_command(env: dict[str, str], *args: str) -> str:
    """The `voxline up` line `make run` would execute (make -n prints, runs nothing). make reads
    every environment variable as a make variable, so a PROFILE left in the runner's
    environment is dropped: only `env` and `args` decide."""
    base = {k: v for k, v in os.environ.items() if k not in ("PROFILE", "VOXLINE_PROFILE")}
    out = subprocess.run(
        ["make", "-n", "run", *args], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, check=True
    ).stdout
    return next(line for line in out.splitlines() if "voxline up" in line)


def test_make_run_leaves_the_variable_alone_unless_asked() -> None:
    assert "--profile" not in _make_run_command({})
    assert "--profile" not in _make_run_command({"VOXLINE_PROFILE": "cloud"})
    assert _make_run_command({"VOXLINE_PROFILE": "cloud"}, "PROFILE=fake").rstrip().endswith("--profile fake")


def test_voxline_settings_prints_each_provider_variable_and_no_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from voxline.cli import main

    monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-secret-value-123456")
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert "VOXLINE_DEEPGRAM_MODEL" in out and "VOXLINE_PROFILE" in out
    assert "(secret)" in out and "dg-secret-value-123456" not in out
