"""Secrets never reach a log line: not in the message, not in a traceback, not in a stack;
nor do callers' phone numbers and words unless VOXLINE_LOG_TRANSCRIPTS is on."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator

import pytest

from voxline import telemetry
from voxline.telemetry import Redactor, setup_logging, words

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
    telemetry._log_words = False


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


# Keys of other accounts, in the shapes providers issue them: never in this process's environment.
FOREIGN = {
    "openai": ("sk-svcacct-Z9y8X7w6V5u4T3s2R1q0PpOoNnMmLlKk", "sk-***"),
    "elevenlabs": ("sk_0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978", "sk_***"),
    "deepgram": ("dc43fc74612ec2cb065315663f25c34a958aa895", "***"),
    "twilio api key sid": ("SK0123456789abcdef0123456789abcdef", "SK***"),
    "stream token (jwt)": ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJDQTEyMyIsImp0aSI6Ilg5In0.c2lnbmF0dXJl", "eyJ***"),
}
TWILIO_TOKEN = "fedcba9876543210fedcba9876543210"  # 32 hex: caught by its context only
CALL_SID = "CA0123456789abcdef0123456789abcdef"
TRACE_ID, SPAN_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.fixture
def redact(monkeypatch: pytest.MonkeyPatch) -> Redactor:
    for name in [k for k in os.environ if k.upper().endswith(("_KEY", "_TOKEN", "_SECRET", "_PASSWORD"))]:
        monkeypatch.delenv(name)
    return Redactor()


@pytest.mark.parametrize("provider", FOREIGN)
def test_a_key_shape_is_masked_without_being_in_the_environment(redact: Redactor, provider: str) -> None:
    key, mask = FOREIGN[provider]
    assert redact(f"upstream said: invalid key {key} (call {CALL_SID})") == (
        f"upstream said: invalid key {mask} (call {CALL_SID})"
    )


@pytest.mark.parametrize(
    ("line", "masked"),
    [
        (f"https://AC{'1' * 32}:{TWILIO_TOKEN}@api.twilio.com/x", f"https://AC{'1' * 32}:***@api.twilio.com/x"),
        ("nats://gateway:s3cret-pass@nats:4222", "nats://gateway:***@nats:4222"),
        ("{'Authorization': 'Basic QUMxOnRva2Vu', 'x': 1}", "{'Authorization': 'Basic ***', 'x': 1}"),
        (f"Authorization: Token {TWILIO_TOKEN}", "Authorization: Token ***"),
        ("authorization: bearer ya29.A0ARrdaM-b3ar3r", "authorization: bearer ***"),
        ("retrying with Bearer ya29.A0ARrdaM-b3ar3r", "retrying with Bearer ***"),
        (f"TWILIO_AUTH_TOKEN={TWILIO_TOKEN} next", "TWILIO_AUTH_TOKEN=*** next"),
        (f"GET /x?AuthToken={TWILIO_TOKEN}&a=1", "GET /x?AuthToken=***&a=1"),
        ("{'xi-api-key': 'a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6'}", "{'xi-api-key': '***'}"),  # old 32-hex ElevenLabs key
        ('{"password": "hunter2-hunter2"}', '{"password": "***"}'),
    ],
)
def test_credentials_are_masked_by_their_context(redact: Redactor, line: str, masked: str) -> None:
    assert redact(line) == masked


@pytest.mark.parametrize(
    "line",
    [
        f"call {CALL_SID} stream MZ0123456789abcdef0123456789abcdef",
        f"traceparent 00-{TRACE_ID}-{SPAN_ID}-01 trace_id={TRACE_ID} span_id={SPAN_ID}",
        "Token bucket refilled; Token refreshed for alice; task-1234 done",
        "round 1 of gpt-4o cut off (finish_reason length, max_completion_tokens 256): 2 sentences kept",
        "sha256 " + "ab" * 32 + " took 1e+10 ns at 2026-01-02T03:04:05+00:00, short +4915112",
        "refused media stream: stream token rejected: Signature has expired",
    ],
)
def test_ids_and_prose_survive(redact: Redactor, line: str) -> None:
    assert redact(line) == line


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_another_providers_key_in_an_exception_is_masked(
    log_text: tuple[logging.Logger, io.StringIO], fmt: str
) -> None:
    """The error path: a provider client raises with another service's key in its message."""
    log, out = log_text
    setup_logging("test", "INFO", fmt, stream=out)
    body = {"detail": "invalid", "echo": {"xi-api-key": FOREIGN["elevenlabs"][0]}, "dg": FOREIGN["deepgram"][0]}
    try:
        raise RuntimeError(f"TTS failed, provider answered {body} for {CALL_SID}")
    except RuntimeError:
        log.exception("sentence failed (Authorization: Token %s)", FOREIGN["deepgram"][0])
    text = out.getvalue()
    assert "RuntimeError: TTS failed" in text and CALL_SID in text
    for key, _ in FOREIGN.values():
        assert key not in text


def test_phone_numbers_are_masked_unless_transcripts_are_on(log_text: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = log_text
    setup_logging("test", "INFO", "json", stream=out)
    log.info("call from +14155552671 to +442071838750 (GET /Calls.json?To=%2B12025550143)")
    assert json.loads(out.getvalue())["msg"] == (
        "call from +1415***2671 to +4420***8750 (GET /Calls.json?To=%2B1202***0143)"
    )
    on = io.StringIO()
    setup_logging("test", "INFO", "json", stream=on, transcripts=True)
    log.info("call from +14155552671, key %s", FOREIGN["openai"][0])
    assert json.loads(on.getvalue())["msg"] == "call from +14155552671, key sk-***"  # keys: always masked


def test_words_are_counted_unless_transcripts_are_on(log_text: tuple[logging.Logger, io.StringIO]) -> None:
    setup_logging("test", "INFO", "json", stream=io.StringIO())
    assert words("my card number is four two") == "<6 words>"
    setup_logging("test", "INFO", "json", stream=io.StringIO(), transcripts=True)
    assert words("my card number is four two") == "'my card number is four two'"
