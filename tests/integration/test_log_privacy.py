"""No key, caller number or caller word in any service's log, through a whole call and its
error paths, while the call record still holds them.

A real stack (nats-server and the five services, fake providers) runs with well-shaped
provider keys in its environment; a caller from a planted number says planted words; then
Twilio's stream status callback reports an error whose text quotes keys of other accounts
(in the shapes OpenAI, ElevenLabs, Deepgram and Twilio issue them), the kind of provider
error body that ends up in logs. Every line every process wrote is then searched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from twilio.request_validator import RequestValidator

from tests.integration.conftest import own_stack
from voxline.devstack import DevStack
from voxline.simulator import CallScript, Utterance, run_call

pytestmark = pytest.mark.integration

# In the services' environment: masked as this process's own secrets and by their shape.
AUTH_TOKEN = "5e0c3f7a9b1d2e4f6a8c0b2d4e6f8a1c"  # Twilio auth token: 32 hex
ENV_KEYS = {
    "VOXLINE_OPENAI_API_KEY": "sk-proj-Pl4ntedOpenAiKeyT3stOnlyAbCdEfGhIjKlMnOpQrStUv",
    "DEEPGRAM_API_KEY": "9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d",  # 40 hex
    "ELEVENLABS_API_KEY": "sk_4a6c8e0b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f",  # sk_ + 48 hex
    "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
}
# Never in any environment: only their shape can give them away.
FOREIGN_KEYS = {
    "openai": "sk-svcacct-Z9y8X7w6V5u4T3s2R1q0PpOoNnMmLlKk",
    "elevenlabs": "sk_0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978",
    "deepgram": "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567",
    "twilio_api_key_sid": "SK0123456789abcdef0123456789abcdef",
    "twilio_auth_token": "fedcba9876543210fedcba9876543210",
    "jwt": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJDQTEyMyIsImp0aSI6Ilg5In0.c2lnbmF0dXJlLWJ5dGVzLWhlcmU",
    "bearer": "ya29.A0ARrdaM-b3ar3rT0kenValue",
    "basic_password": "hunter2-Hunter2-hunter2",
}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"  # OpenTelemetry ids: must survive
SPAN_ID = "00f067aa0ba902b7"
CALLER = "+14155552671"
AGENT_NUMBER = "+12025550143"
SAID = "my neighbour Margaret grows purple tomatoes in Chicago"


def provider_error() -> str:
    """What a provider's error body quoted back might look like: keys in headers, URLs, JSON;
    the caller's number, plain and URL-encoded."""
    k = FOREIGN_KEYS
    return (
        f"upstream 401 from https://AC{'1' * 32}:{k['twilio_auth_token']}@api.twilio.com/2010-04-01 "
        f"(api key {k['twilio_api_key_sid']}); request headers {{'Authorization': 'Bearer {k['bearer']}', "
        f"'xi-api-key': '{k['elevenlabs']}'}}; body {{\"api_key\": \"{k['openai']}\"}}; "
        f"Authorization: Token {k['deepgram']}; token={k['jwt']}; "
        f"proxy http://svc:{k['basic_password']}@proxy.local:3128; traceparent 00-{TRACE_ID}-{SPAN_ID}-01; "
        f"call from {CALLER} (GET /Calls.json?To={AGENT_NUMBER.replace('+', '%2B')})"
    )


def every_log(log_dir: Path) -> dict[str, str]:
    """What each process (nats-server, front door and the five services) wrote, by file."""
    return {f.name: f.read_text(errors="replace") for f in sorted(log_dir.glob("*.log"))}


@pytest.fixture(scope="module")
def private_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    # Whisper (offline, shipped on PyPI) hears the caller: the local STT is the provider
    # that logged each final transcript; the rest of the stack stays fake.
    with own_stack(tmp_path_factory, "privacy", {**ENV_KEYS, "VOXLINE_STT_PROVIDER": "local"}) as s:
        yield s


async def test_no_key_number_or_caller_word_reaches_any_log(private_stack: DevStack) -> None:
    stack = private_stack
    s = CallScript(utterances=[Utterance(text=SAID)], from_number=CALLER, to_number=AGENT_NUMBER)
    result = await run_call(stack.gateway_url, s, auth_token=AUTH_TOKEN)
    assert result.accepted and not result.errors, result.errors
    record = result.record
    assert record is not None and record["status"] == "ended"
    # The record keeps what the logs must not.
    assert record["from_number"] == CALLER and record["to_number"] == AGENT_NUMBER
    heard = " ".join(t["caller_text"] for t in record["turns"])
    # Whatever Whisper made of it, the caller's own words: long enough not to be log vocabulary.
    words = {w.strip(".,!?").lower() for w in heard.split() if len(w.strip(".,!?")) >= 6}
    assert len(words) >= 2, f"Whisper heard too little of the caller: {heard!r}"

    # Error path: Twilio reports a stream error whose text quotes other accounts' keys.
    url = f"{stack.gateway_url}/twilio/stream-status?agent=demo"
    form = {"CallSid": s.call_sid or "", "StreamEvent": "stream-error", "StreamError": provider_error()}
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, form)
    async with httpx.AsyncClient() as client:
        answer = await client.post(url, data=form, headers={"X-Twilio-Signature": signature})
    assert answer.status_code == 204

    stack.stop()  # every process has written its last line
    assert stack.log_dir is not None
    logs = every_log(stack.log_dir)
    assert {"gateway.log", "orchestrator.log", "stt.log", "brain.log", "tts.log"} <= set(logs)
    lines = [(name, line) for name, text in logs.items() for line in text.splitlines()]
    error_lines = [line for _, line in lines if "media stream error reported by Twilio" in line]
    assert len(error_lines) == 1, "the error path was not logged"
    assert TRACE_ID in error_lines[0] and SPAN_ID in error_lines[0]  # ids stay readable
    assert "+1415***2671" in error_lines[0]  # a number is masked, not gone
    transcripts = [line for name, line in lines if name == "stt.log" and "final transcript" in line]
    assert transcripts and all("words>" in line for line in transcripts)  # a count instead of the words
    assert s.call_sid and any(s.call_sid in line for _, line in lines)  # call SIDs too

    planted = {
        **{f"env {k}": v for k, v in ENV_KEYS.items()},
        **{f"foreign {k}": v for k, v in FOREIGN_KEYS.items()},
        "caller number": CALLER,
        "caller number, digits": CALLER[1:],
        "agent number": AGENT_NUMBER,
        "agent number, digits": AGENT_NUMBER[1:],
        **{f"caller word {w!r}": w for w in words},
    }
    leaks = [
        f"{what} in {name}: {line[:300]}"
        for name, line in lines
        for what, value in planted.items()
        if value.lower() in line.lower()
    ]
    assert not leaks, "\n".join(leaks)
