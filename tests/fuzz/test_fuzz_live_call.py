"""A live call keeps going while other connections to the same gateway send garbage.

A simulated Twilio call (voxline/simulator) talks to the agent; meanwhile raw WebSocket
connections to /twilio/media send random bytes, huge frames, invalid JSON, real events with
damaged fields, and `start` events with a forged stream token for the live call's own
CallSid, and random unsigned forms go to the webhooks. The call must get every answer,
a forged start must be refused (1008) without a byte of the call's audio, and the gateway
must stay up and ready, with no handler crashing in its log. Only in `make fuzz` (a call
takes ~20 s): calls back to back for the target's share of the minutes. Garbage comes from
`random` with the seed in the report (hypothesis does not drive concurrent streams)."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
import time
from collections import Counter as Tally
from typing import Any

import httpx
import jwt
import pytest
import websockets
from twilio.request_validator import RequestValidator
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.fuzz.harness import (
    COUNTS,
    Count,
    Finding,
    assert_clean,
    full_mode,
    progress,
    pytest_timeout_s,
    target_seconds,
)
from tests.fuzz.test_fuzz_twilio_protocol import VALID
from tests.integration.conftest import AUTH_TOKEN, script_for
from voxline.devstack import DevStack
from voxline.simulator import CallResult, Utterance, run_call

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(pytest_timeout_s() + 60)]
TARGET = "live call + garbage"

QUESTIONS = ["what are your opening hours", "do you take my insurance", "where are you located"]
HUGE = [64 * 1024, 1024 * 1024]  # bytes of one text frame; `make fuzz` adds 8 MiB now and then


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, 0, -1, 2**64, 1e308, "", "x" * rng.randrange(200)])
    if kind == 2:
        return rng.randbytes(rng.randrange(30)).decode("latin-1")
    if kind == 3:
        return str(rng.random())
    if kind in (4, 5):
        return {rng.choice(["event", "start", "media", "a", ""]): random_json(rng, depth + 1) for _ in range(3)}
    return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]


def damaged_event(rng: random.Random) -> str:
    event: Any = json.loads(json.dumps(VALID[rng.choice(sorted(VALID))]))
    node = event
    while isinstance(node, dict) and node:
        key = rng.choice(sorted(node))
        if rng.random() < 0.5 or not isinstance(node[key], dict):
            if rng.random() < 0.3:
                del node[key]
            else:
                node[key] = random_json(rng)
            break
        node = node[key]
    return json.dumps(event)


def forged_tokens(call_sid: str) -> list[str]:
    """Tokens an attacker could make without the gateway's secret."""
    claims = {"sub": call_sid, "agent": "demo", "acct": "", "jti": secrets.token_urlsafe(8), "iat_us": 1, "exp": 2**31}
    return [
        "",
        "forged.token.value",
        jwt.encode(claims, "not-the-secret-" * 4, algorithm="HS256"),
        jwt.encode(claims, "x" * 64, algorithm="HS512"),
        jwt.encode(claims, None, algorithm="none"),
        base64.urlsafe_b64encode(json.dumps(claims).encode()).decode(),
    ]


def forged_start(call_sid: str, token: str) -> str:
    start = json.loads(json.dumps(VALID["start"]))
    start["start"]["callSid"] = call_sid
    start["start"]["customParameters"] = {"agent_id": "demo", "stream_token": token}
    return json.dumps(start)


class Garbage:
    """Sends garbage until stopped; counts what it sent and records broken properties."""

    def __init__(self, stack: DevStack, call_sid: str, rng: random.Random, count: Count) -> None:
        self.media_url = stack.gateway_url.replace("http://", "ws://") + "/twilio/media"
        self.base = stack.gateway_url
        self.call_sid, self.rng, self.count = call_sid, rng, count
        self.upgrade_signature = RequestValidator(AUTH_TOKEN).compute_signature(self.media_url, {})
        self.sent: Tally[str] = Tally()
        self.stop = asyncio.Event()
        self.findings: list[Finding] = []

    async def websocket_loop(self) -> None:
        while not self.stop.is_set():
            kind = self.rng.choice(["bytes", "json", "events", "forged", "huge", "silent"])
            # Mostly with the upgrade signed as Twilio signs it (the `<Stream url>`, no fields),
            # so the garbage reaches the stream itself: what a bug on Twilio's side or a
            # replayed upgrade would send. Unsigned ones must be refused at the upgrade.
            signed = self.rng.random() < 0.8
            headers = {"X-Twilio-Signature": self.upgrade_signature} if signed else {}
            try:
                async with websockets.connect(
                    self.media_url, additional_headers=headers, open_timeout=5, compression=None, max_size=None
                ) as ws:
                    if not signed:
                        self.findings.append(Finding("unsigned media WebSocket upgrade accepted", kind))
                    await self._one(ws, kind)
            except InvalidStatus as refused:
                if signed and refused.response.status_code != 429:  # too many pending sockets: a limit doing its job
                    self.findings.append(Finding(f"signed upgrade refused {refused.response.status_code}", kind))
                kind = "refused upgrade"
            except (ConnectionClosed, OSError, TimeoutError):
                pass  # the gateway may close garbage connections any way it likes
            self.sent[kind] += 1
            self.count.inputs += 1

    async def _one(self, ws: websockets.ClientConnection, kind: str) -> None:
        rng = self.rng
        if kind == "bytes":
            for _ in range(20):
                await ws.send(rng.randbytes(rng.randrange(1, 2000)))
        elif kind == "json":
            for _ in range(20):
                text = json.dumps(random_json(rng))
                await ws.send(text[: rng.randrange(len(text) + 1)] if rng.random() < 0.5 else text)
        elif kind == "events":
            for _ in range(20):
                await ws.send(damaged_event(rng))
        elif kind == "huge":
            size = rng.choice(HUGE + ([8 * 1024 * 1024] if full_mode() and rng.random() < 0.1 else []))
            await ws.send('{"event":"media","media":{"payload":"' + "A" * size + '"}}')
        elif kind == "forged":
            await self._forged(ws, rng.choice(forged_tokens(self.call_sid)))
        else:  # connect, say nothing, leave
            await asyncio.sleep(0.2)

    async def _forged(self, ws: websockets.ClientConnection, token: str) -> None:
        """A forged start for the live call: refused, and none of the call's audio comes back."""
        await ws.send(json.dumps(VALID["connected"]))
        await ws.send(forged_start(self.call_sid, token))
        try:
            while True:
                message = await asyncio.wait_for(ws.recv(), 5.0)
                if '"media"' in str(message) or '"mark"' in str(message):
                    self.findings.append(Finding("forged start got the call's audio", f"token {token[:40]!r}"))
                    return
        except TimeoutError:
            self.findings.append(Finding("forged start not refused within 5 s", f"token {token[:40]!r}"))
        except ConnectionClosed as closed:
            if closed.rcvd is None or closed.rcvd.code != 1008:
                got = closed.rcvd.code if closed.rcvd else None
                self.findings.append(Finding(f"forged start closed with {got}, not 1008", f"token {token[:40]!r}"))

    async def http_loop(self) -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            while not self.stop.is_set():
                fields = ["CallSid", "From", "To", "AccountSid", "agent", "x" * self.rng.randrange(1, 5)]
                form = {self.rng.choice(fields): str(random_json(self.rng))[:200] for _ in range(self.rng.randrange(6))}
                if self.rng.random() < 0.3:
                    form["CallSid"] = self.call_sid  # the live call's: still needs Twilio's signature
                headers = {"X-Twilio-Signature": base64.b64encode(self.rng.randbytes(20)).decode()}
                response = await client.post(f"{self.base}/twilio/voice", data=form, headers=headers)
                if response.status_code != 403:
                    self.findings.append(Finding(f"unsigned /twilio/voice answered {response.status_code}", str(form)))
                self.sent["http"] += 1
                self.count.inputs += 1


async def one_call(stack: DevStack, rng: random.Random, count: Count) -> tuple[CallResult, Garbage]:
    questions = rng.sample(QUESTIONS, 2)
    script = script_for(*(Utterance(text=q) for q in questions))
    assert script.call_sid is not None
    garbage = Garbage(stack, script.call_sid, rng, count)
    loops = [asyncio.create_task(garbage.websocket_loop()) for _ in range(3)] + [
        asyncio.create_task(garbage.http_loop())
    ]
    try:
        result = await run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN)
    finally:
        garbage.stop.set()
        await asyncio.gather(*loops, return_exceptions=True)
    for task in loops:
        if task.exception() is not None:
            garbage.findings.append(Finding("garbage sender failed", repr(task.exception())))
    if not (result.accepted and not result.errors and [t.completed for t in result.turns] == [True, True]):
        garbage.findings.append(
            Finding("the live call lost answers", f"accepted {result.accepted}, errors {result.errors}, "
                    f"turns {[t.completed for t in result.turns]}, questions {questions}")
        )  # fmt: skip
    return result, garbage


def handler_crashes(stack: DevStack, since: int) -> dict[str, str]:
    """Unhandled exceptions in the gateway's log after byte `since` (uvicorn's 'Exception in
    ASGI application': a handler crashed, whatever the client saw), by exception and our
    innermost frame."""
    assert stack.log_dir is not None
    with open(stack.log_dir / "gateway.log", "rb") as f:
        f.seek(since)
        lines = f.read().decode(errors="replace").splitlines()
    crashes: dict[str, str] = {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if "Exception in ASGI application" not in entry.get("msg", ""):
            continue
        trace = entry.get("error", "").strip().splitlines()
        ours = [t.strip() for t in trace if "/work/main/" in t and "/.venv/" not in t]
        site = f"handler crash: {trace[-1][:120] if trace else '?'} at {ours[-1] if ours else '?'}"
        crashes.setdefault(site, "\n".join(trace[-8:]))
    return crashes


def log_size(stack: DevStack) -> int:
    assert stack.log_dir is not None
    return (stack.log_dir / "gateway.log").stat().st_size


@pytest.mark.skipif(not full_mode(), reason="a call takes ~20 s: `make fuzz` runs it, `make test` does not")
async def test_live_call_survives_garbage_on_the_same_gateway(fuzz_stack: DevStack) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    count = Count(TARGET)
    COUNTS.append(count)
    started, calls, sent, since = time.monotonic(), 0, Tally[str](), log_size(fuzz_stack)
    while True:
        _, garbage = await one_call(fuzz_stack, rng, count)
        calls += 1
        sent.update(garbage.sent)
        for finding in garbage.findings:
            count.failures.setdefault(finding.site, f"{finding} (seed {seed})")
        for site, trace in handler_crashes(fuzz_stack, since).items():
            count.failures.setdefault(site, f"{trace} (seed {seed})")
        since = log_size(fuzz_stack)
        count.seconds = time.monotonic() - started
        progress(f"live call + garbage: {calls} calls, {dict(sent)}, {len(count.failures)} failures")
        if count.seconds >= target_seconds(TARGET):
            break
    count.batches = calls
    async with httpx.AsyncClient(timeout=5.0) as client:
        assert (await client.get(f"{fuzz_stack.gateway_url}/readyz")).status_code == 200
    assert fuzz_stack.processes["gateway"].alive
    assert sent["forged"] > 0 and sent["http"] > 0, sent
    assert_clean(count)
