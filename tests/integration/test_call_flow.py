"""Simulated Twilio calls through the real gateway, services and nats-server."""

from __future__ import annotations

import httpx
import pytest
from twilio.request_validator import RequestValidator

from tests.integration.conftest import AUTH_TOKEN, service_log, wait_until
from voxline.devstack import DevStack
from voxline.simulator import CallResult, CallScript, Utterance, run_call

pytestmark = pytest.mark.integration


def script(*texts: str, **kwargs: object) -> CallScript:
    """Fake STT is scripted per call through a custom stream parameter."""
    utterances = kwargs.pop("utterances", None) or [Utterance(text=t) for t in texts]
    return CallScript(
        utterances=utterances,  # type: ignore[arg-type]
        extra_parameters={"fake_transcripts": "|".join(texts)},
        **kwargs,  # type: ignore[arg-type]
    )


async def call(stack: DevStack, s: CallScript) -> CallResult:
    return await run_call(stack.gateway_url, s, auth_token=AUTH_TOKEN)


async def test_two_turn_conversation_gets_two_replies_in_order(stack: DevStack) -> None:
    result = await call(stack, script("what are your opening hours", "do you take my insurance"))
    assert result.accepted and not result.errors, result.errors
    assert result.greeting_latency_ms is not None
    assert [t.completed for t in result.turns] == [True, True]
    assert result.turns[0].turn_id is not None and result.turns[1].turn_id is not None
    assert result.turns[0].turn_id < result.turns[1].turn_id
    # What was played never goes back to an older turn.
    played_turns = [p.turn_id for p in result.played if p.turn_id is not None]
    assert played_turns == sorted(played_turns)
    record = result.record
    assert record is not None and record["status"] == "ended"
    replies = [t for t in record["turns"] if t["kind"] == "reply"]
    assert [t["caller_text"] for t in replies] == ["what are your opening hours", "do you take my insurance"]
    assert "opening hours" in replies[0]["reply_text"] and "insurance" in replies[1]["reply_text"]
    assert all(t["heard_text"] == t["reply_text"] for t in replies)
    assert all(t["latency"]["first_media_sent"] > 0 for t in replies)


async def test_barge_in_clears_and_nothing_of_the_cancelled_turn_is_heard_after(stack: DevStack) -> None:
    s = script(
        "tell me everything about your clinic",
        "stop, I have a question",
        utterances=[
            Utterance(text="tell me everything about your clinic"),
            Utterance(text="stop, I have a question", barge_in_after_ms=600),
        ],
    )
    result = await call(stack, s)
    assert result.accepted and not result.errors, result.errors
    assert result.clears >= 1
    assert len(result.barge_ins) == 1
    barge = result.barge_ins[0]
    assert barge.stopped_by == "clear"
    assert barge.cancelled_audio_heard_after_ms == 0
    assert result.record is not None
    interrupted = [t for t in result.record["turns"] if t["interrupted"]]
    assert len(interrupted) == 1
    heard, full = interrupted[0]["heard_text"], interrupted[0]["reply_text"]
    assert full.startswith(heard) and len(heard) < len(full)
    # The interruption got its own answer afterwards.
    assert result.record["turns"][-1]["caller_text"] == "stop, I have a question"
    assert result.turns[-1].completed


async def test_stream_without_valid_token_is_refused(stack: DevStack) -> None:
    for s in (CallScript(drop_stream_token=True), CallScript(stream_token_override="forged.token.value")):
        result = await call(stack, s)
        assert not result.accepted
        assert result.close_code == 1008
        assert result.media_received == 0


async def test_bad_twilio_signature_gets_403(stack: DevStack) -> None:
    url = f"{stack.gateway_url}/twilio/voice?agent=demo"
    form = {"CallSid": "CA" + "1" * 32, "From": "+15005550006", "To": "+15005550001"}
    async with httpx.AsyncClient() as client:
        bad = await client.post(url, data=form, headers={"X-Twilio-Signature": "bm90LWEtc2lnbmF0dXJl"})
        missing = await client.post(url, data=form)
        good_sig = RequestValidator(AUTH_TOKEN).compute_signature(url, form)
        good = await client.post(url, data=form, headers={"X-Twilio-Signature": good_sig})
    assert bad.status_code == 403 and missing.status_code == 403
    assert good.status_code == 200 and "<Stream" in good.text and "ws://" in good.text


async def test_malformed_frame_is_logged_and_the_call_goes_on(stack: DevStack) -> None:
    result = await call(stack, script("hello", malformed_frame_after_ms=200))
    assert result.accepted and not result.errors, result.errors
    assert result.turns[0].completed
    assert "malformed media stream message ignored" in service_log(stack, "gateway")
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"http://127.0.0.1:{stack.health_port('gateway')}/metrics")).text
    assert "voxline_gateway_malformed_frames_total" in metrics
    assert stack.processes["gateway"].alive
    # And the gateway still takes calls.
    assert (await call(stack, script("again"))).turns[0].completed


async def test_hang_up_releases_every_per_call_resource(stack: DevStack) -> None:
    result = await call(stack, script("hello"))
    assert result.accepted and result.turns[0].completed
    call_id = result.call_sid

    async def released() -> bool:
        async with httpx.AsyncClient() as client:
            for name in ("orchestrator", "stt", "brain", "tts"):
                status = (await client.get(f"http://127.0.0.1:{stack.health_port(name)}/status")).json()
                if call_id in str(status):
                    return False
            gateway = (await client.get(f"http://127.0.0.1:{stack.health_port('gateway')}/status")).json()
            if call_id in gateway["calls"]:
                return False
            subs = (await client.get(f"{stack.nats_monitor_url}/subsz?subs=1")).json()
            return call_id not in str(subs)

    await wait_until(released, timeout=10, what=f"release of every resource of {call_id}")


async def test_metrics_and_status_only_on_the_gateways_internal_port(stack: DevStack) -> None:
    """The Ingress exposes the public port: per-call status and metrics must not be on it."""
    internal = f"http://127.0.0.1:{stack.health_port('gateway')}"
    async with httpx.AsyncClient() as client:
        for path in ("/metrics", "/status"):
            assert (await client.get(f"{stack.gateway_url}{path}")).status_code == 404, path
            assert (await client.get(f"{internal}{path}")).status_code == 200, path
        for path in ("/healthz", "/readyz"):
            assert (await client.get(f"{stack.gateway_url}{path}")).status_code == 200, path
            assert (await client.get(f"{internal}{path}")).status_code == 200, path
