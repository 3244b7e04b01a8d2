"""Webhook signing (the receiver's side as the README shows it), the retry schedule and
which answers are retried, the events a call record implies, and the agent's settings."""

from __future__ import annotations

import hashlib
import hmac
import random
import time

import msgspec
import pytest

from proto.records import CallRecord, CallStatus, TurnRecord
from voxline.agents import Agent
from voxline.webhooks.dispatcher import RetryPolicy, retryable, where
from voxline.webhooks.events import implied_events
from voxline.webhooks.signing import settings_problem, signature, verify

SECRET = "whsec-unit"
BODY = b'{"id":"evt_1","type":"call.started"}'


def readme_verify(secret: str, body: bytes, header: str, tolerance: int = 300) -> bool:
    # The six lines the README gives receivers, verbatim.
    parts = dict(p.split("=", 1) for p in header.split(","))
    signed = parts["t"].encode() + b"." + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(parts["t"])) <= tolerance
    return fresh and hmac.compare_digest(expected, parts["v1"])


def test_a_signature_verifies_with_the_readme_snippet_and_ours() -> None:
    header = signature(SECRET, BODY)
    assert header.startswith("t=") and ",v1=" in header
    assert readme_verify(SECRET, BODY, header)
    assert verify(SECRET, BODY, header)


def test_a_known_vector() -> None:
    expected = hmac.new(b"k", b"1700000000." + b"{}", hashlib.sha256).hexdigest()
    assert signature("k", b"{}", at=1700000000) == f"t=1700000000,v1={expected}"


@pytest.mark.parametrize("check", [readme_verify, verify])
def test_a_tampered_body_a_wrong_secret_or_a_moved_timestamp_fails(check) -> None:  # type: ignore[no-untyped-def]
    header = signature(SECRET, BODY)
    assert not check(SECRET, BODY.replace(b"started", b"ended!!"), header)
    assert not check("another-secret", BODY, header)
    t, v1 = header.split(",")
    moved = f"t={int(t[2:]) + 1},{v1}"
    assert not check(SECRET, BODY, moved)


def test_an_old_signature_is_refused() -> None:
    header = signature(SECRET, BODY, at=int(time.time()) - 3600)
    assert not verify(SECRET, BODY, header)
    assert not readme_verify(SECRET, BODY, header)
    assert not verify(SECRET, BODY, "garbage")


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(attempts=5, base_s=4.0, max_s=30.0)
    rng = random.Random(1)
    for retry, full in [(1, 4.0), (2, 8.0), (3, 16.0), (4, 30.0), (5, 30.0)]:
        delays = [policy.delay_s(retry, rng) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays), (retry, min(delays), max(delays))
        assert max(delays) - min(delays) > full / 4, "jittered, not fixed"
    # The defaults: 5 attempts spread over about a minute (4 waits of 2-4, 4-8, 8-16, 15-30 s).
    waits = [policy.delay_s(r) for r in range(1, 5)]
    assert 29 <= sum(waits) <= 58


@pytest.mark.parametrize(("status", "again"), [(500, True), (502, True), (503, True), (408, True), (429, True)])
def test_timeouts_throttling_and_server_errors_are_retried(status: int, again: bool) -> None:
    assert retryable(status) is again


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 413, 422])
def test_other_client_errors_are_final(status: int) -> None:
    assert not retryable(status)


def test_logs_show_no_query_of_a_url() -> None:
    assert where("https://h.example/hook?token=abc") == "https://h.example/hook"


def record(status: CallStatus = "in-progress", turns: list[TurnRecord] | None = None) -> CallRecord:
    return CallRecord(
        call_id="c1", call_sid="CA1", agent_id="a", status=status, started_at_us=1, ended_at_us=9, turns=turns or []
    )


def test_a_record_implies_each_event_once_in_order() -> None:
    turns = [
        TurnRecord(turn_id=1, kind="greeting", reply_text="Hello.", heard_text="Hello."),
        TurnRecord(
            turn_id=2,
            kind="reply",
            caller_text="hours?",
            reply_text="Nine to five. Anything else?",
            heard_text="Nine to five.",
            interrupted=True,
        ),
    ]
    first = implied_events(record(), set(), 5)
    assert [e.type for e in first] == ["call.started"]
    later = implied_events(record("ended", turns), {e.id for e in first}, 5)
    assert [e.id for e in later] == ["evt_c1_t1_agent", "evt_c1_t2_caller", "evt_c1_t2_agent", "evt_c1_ended"]
    bodies = [msgspec.json.decode(e.body) for e in later]
    assert bodies[2]["data"] == {
        "speaker": "agent",
        "text": "Nine to five.",
        "turn_id": 2,
        "turn_kind": "reply",
        "interrupted": True,
    }, "an interrupted reply is what the caller heard"
    assert bodies[3]["data"]["record"]["turns"][1]["caller_text"] == "hours?"
    assert set(bodies[0]) == {"id", "type", "created_at", "call_id", "agent_id", "data"}
    assert implied_events(record("ended", turns), {e.id for e in first + later}, 5) == []


def agent(**fields: str) -> Agent:
    return msgspec.convert({"id": "a", "name": "A", "greeting": "Hi", "system_prompt": "S", **fields}, Agent)


def test_agent_webhook_settings_are_checked_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOXLINE_INSECURE_DEV", raising=False)
    ok = agent(webhook_url="https://h.example/hook", webhook_secret_env="VOXLINE_WEBHOOK_SECRET_A")
    assert ok.webhook_url == "https://h.example/hook"
    assert agent(webhook_url="http://127.0.0.1:9/h", webhook_secret_env="VOXLINE_WEBHOOK_SECRET")
    bad = [
        ({"webhook_url": "http://h.example/hook", "webhook_secret_env": "VOXLINE_WEBHOOK_SECRET"}, "webhook_url"),
        ({"webhook_url": "ftp://h.example/", "webhook_secret_env": "VOXLINE_WEBHOOK_SECRET"}, "webhook_url"),
        ({"webhook_url": "https://u:p@h.example/", "webhook_secret_env": "VOXLINE_WEBHOOK_SECRET"}, "webhook_url"),
        ({"webhook_url": "https://h.example/"}, "webhook_secret_env"),
        ({"webhook_url": "https://h.example/", "webhook_secret_env": "VOXLINE_NATS_PASSWORD"}, "webhook_secret_env"),
    ]
    for fields, named in bad:
        with pytest.raises(msgspec.ValidationError, match=named):
            agent(**fields)
    monkeypatch.setenv("VOXLINE_INSECURE_DEV", "1")
    assert settings_problem("http://h.example/hook", "VOXLINE_WEBHOOK_SECRET") == ""
