"""Secrets never reach a log line: not in the message, not in a traceback, not in a stack."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from voxline.telemetry import setup_logging

KEY = "dg-live-7f3a9c2e51b04d"  # the value of DEEPGRAM_API_KEY in these tests
BEARER = "Bearer eyJhbGciOiJIUzI1NiJ9.payload"
OPENAI_STYLE = "sk-proj-abcdefghijklmnopqrstuvwx"


@pytest.fixture
def log_text(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    monkeypatch.setenv("DEEPGRAM_API_KEY", KEY)
    root = logging.getLogger()
    saved, saved_level = root.handlers[:], root.level
    out = io.StringIO()
    yield logging.getLogger("voxline.test"), out
    root.handlers[:] = saved
    root.setLevel(saved_level)


def _connect(key: str) -> None:
    headers = {"Authorization": f"Token {key}"}
    raise ConnectionError(f"handshake refused with {headers}")


def _region_of_hardcoded_client() -> str:
    # The key is only in this frame's source line, which the traceback prints; the error says 'region'.
    return {"api_key": "sk-proj-abcdefghijklmnopqrstuvwx", "zone": "eu"}["region"]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_traceback_that_quotes_a_key_is_masked(log_text: tuple[logging.Logger, io.StringIO], fmt: str) -> None:
    log, out = log_text
    setup_logging("test", "INFO", fmt, stream=out)
    try:
        _connect(KEY)
    except ConnectionError:
        log.exception("provider failed")
    text = out.getvalue()
    assert "ConnectionError" in text and "handshake refused" in text  # the traceback is there
    assert KEY not in text
    assert "***" in text


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_key_in_a_frames_source_line_is_masked(log_text: tuple[logging.Logger, io.StringIO], fmt: str) -> None:
    log, out = log_text
    setup_logging("test", "INFO", fmt, stream=out)
    try:
        _region_of_hardcoded_client()
    except KeyError:
        log.exception("config lookup failed")
    text = out.getvalue()
    assert "_region_of_hardcoded_client" in text and "KeyError" in text  # the frame is there
    assert OPENAI_STYLE not in text
    assert "sk-***" in text


def test_message_stack_and_credential_shapes_are_masked(log_text: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = log_text
    setup_logging("test", "INFO", "json", stream=out)
    log.error("auth header %s, key %s, env key %s", BEARER, OPENAI_STYLE, KEY, stack_info=True)
    entry = json.loads(out.getvalue())
    for secret in (BEARER.split()[1], OPENAI_STYLE, KEY):
        assert secret not in out.getvalue()
    assert entry["msg"] == "auth header Bearer ***, key sk-***, env key ***"
    assert "test_message_stack_and_credential_shapes_are_masked" in entry["stack"]


def test_ordinary_text_is_left_alone(log_text: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = log_text
    setup_logging("test", "INFO", "json", stream=out)
    log.info("Token bucket refilled; task-1234 done")
    assert json.loads(out.getvalue())["msg"] == "Token bucket refilled; task-1234 done"
