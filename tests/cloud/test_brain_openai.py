"""The OpenAI brain over the real stack: simulated Twilio calls through the gateway, the
services and nats-server, with the brain's official SDK talking to the chat-completions
emulator, the gateway's Twilio SDK to the Twilio REST emulator, and webhook tools to a
small recording server. STT and TTS are the fakes (scripted per call). The simulator also
plays an IVR (keypad tones heard in the agent's audio) for the send_dtmf tool."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.cloud.conftest import LogsSince, all_logs, counter_value, metrics, start_stack
from tests.emulators.openai_chat import DEFAULT_KEY, OpenAiChatEmulator, Reply
from tests.emulators.twilio_rest import ACCOUNT_SID, TwilioRestEmulator
from tests.integration.conftest import AUTH_TOKEN, wait_until
from tests.integration.test_call_events import collect
from voxline.devstack import DevStack
from voxline.simulator import CallResult, CallScript, Utterance, run_call

pytestmark = pytest.mark.integration

APOLOGY = "Sorry, I'm having trouble right now. Could you say that again?"
FRONT_DESK = "+15550100123"
FAQ = """Opening hours: Monday to Friday from 8 AM to 6 PM. Closed on Sunday.

Insurance: we accept Aetna, Cigna and Delta Dental. We do not accept Medicaid.

Parking is free behind the building.
"""
AGENT = """
name = "Tooly"
greeting = "Hello."
system_prompt = "You are the receptionist of a test clinic."
apology = "{apology}"

[turn]
preemptive_reply = false

[[knowledge]]
file = "faq.md"

[[tools]]
name = "lookup_appointment"
description = "Find the caller's next appointment by their name."
kind = "webhook"
url = "{webhook}"
parameters = {{ type = "object", properties = {{ name = {{ type = "string" }} }}, required = ["name"] }}

[[tools]]
name = "transfer_to_human"
description = "Transfer the caller to the front desk."
kind = "transfer_call"
to = "{front_desk}"

[[tools]]
name = "end_call"
description = "End the call when the caller is done."
kind = "end_call"
"""


WALKER = """
name = "Walker"
greeting = "Hello, this is an assistant calling for a customer."
system_prompt = "You call businesses for a customer and walk their phone menus."

[turn]
preemptive_reply = false

[[tools]]
name = "press_keys"
description = "Press keys on the phone keypad to answer a phone menu."
kind = "send_dtmf"
"""


class WebhookRecorder:
    """A business's webhook: records each POSTed JSON body, answers a fixed result."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.answer: dict[str, Any] = {"appointment": "Tuesday afternoon with Doctor Lopez"}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="webhook", daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return web.json_response(self.answer)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    def start(self) -> WebhookRecorder:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="module")
def hook() -> Iterator[WebhookRecorder]:
    recorder = WebhookRecorder().start()
    yield recorder
    recorder.stop()


@pytest.fixture(autouse=True)
def fresh(chat: OpenAiChatEmulator, twilio: TwilioRestEmulator, hook: WebhookRecorder) -> None:
    chat.reset()
    twilio.reset()
    hook.bodies.clear()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    chat: OpenAiChatEmulator,
    twilio: TwilioRestEmulator,
    hook: WebhookRecorder,
) -> Iterator[DevStack]:
    agents = tmp_path_factory.mktemp("agents")
    (agents / "faq.md").write_text(FAQ)
    webhook = f"http://127.0.0.1:{hook.port}/hook"
    (agents / "tooly.toml").write_text(AGENT.format(apology=APOLOGY, webhook=webhook, front_desk=FRONT_DESK))
    (agents / "walker.toml").write_text(WALKER)
    env = {
        "VOXLINE_AGENTS_DIR": str(agents),
        "VOXLINE_BRAIN_PROVIDER": "openai",
        "VOXLINE_OPENAI_API_KEY": DEFAULT_KEY,
        "VOXLINE_OPENAI_BASE_URL": chat.base_url,
        "VOXLINE_OPENAI_TIMEOUT_S": "1.0",
        "VOXLINE_BRAIN_RETRY_BACKOFF_S": "0.1",
        # BM25 alone: these tests are about the OpenAI provider and the prompt it sends, whose
        # knowledge lines must not depend on whether the embeddings were built yet (hybrid
        # retrieval has its own tests, test_retrieval); and the background embedding of the
        # FAQ would compete for the CPU with the 1 s model timeout above at the suite's start.
        "VOXLINE_KNOWLEDGE_EMBEDDER": "none",
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "VOXLINE_TWILIO_API_BASE": twilio.base_url,
    }
    s = start_stack(tmp_path_factory, "brain-openai", env)
    yield s
    s.stop()


async def call(stack: DevStack, *utterances: Utterance, trailing_silence_ms: int = 200) -> CallResult:
    heard = [t for u in utterances for t in u.transcripts()]
    script = CallScript(
        agent_id="tooly",
        utterances=list(utterances),
        extra_parameters={"fake_transcripts": "|".join(heard)},
        trailing_silence_ms=trailing_silence_ms,
    )
    return await run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN)


def replies(result: CallResult) -> list[dict[str, Any]]:
    assert result.record is not None, result.notes
    return [t for t in result.record["turns"] if t["kind"] != "greeting"]


async def provider_errors(stack: DevStack, kind: str) -> float:
    return counter_value(await metrics(stack, "brain"), "voxline_provider_errors_total", provider="openai", kind=kind)


# --- conversation ---------------------------------------------------------------------


async def test_reply_streams_from_the_model_with_knowledge_and_history(
    stack: DevStack, chat: OpenAiChatEmulator
) -> None:
    chat.replies = [Reply("We are open Monday to Friday from eight to six."), Reply("Yes, we accept Aetna.")]
    result = await call(stack, Utterance(text="When are you open?"), Utterance(text="Do you take Aetna insurance?"))
    assert result.accepted and not result.errors, result.errors
    turns = replies(result)
    assert [t["reply_text"] for t in turns] == [
        "We are open Monday to Friday from eight to six.",
        "Yes, we accept Aetna.",
    ]
    first, second = chat.requests
    assert first.body["model"] == "gpt-4o" and first.body["stream"] is True
    tools = {t["function"]["name"] for t in first.body["tools"]}
    assert tools == {"lookup_appointment", "transfer_to_human", "end_call"}
    assert first.system.startswith("You are the receptionist of a test clinic.")
    assert "Opening hours: Monday to Friday" in first.system and "Medicaid" not in first.system
    assert "we accept Aetna, Cigna" in second.system
    assert second.messages[1:] == [
        {"role": "assistant", "content": "Hello."},  # the greeting
        {"role": "user", "content": "When are you open?"},
        {"role": "assistant", "content": "We are open Monday to Friday from eight to six."},
        {"role": "user", "content": "Do you take Aetna insurance?"},
    ]


async def test_webhook_tool_runs_and_its_result_is_spoken(
    stack: DevStack, chat: OpenAiChatEmulator, hook: WebhookRecorder, new_logs: LogsSince
) -> None:
    chat.replies = [
        Reply(tool_calls=[("lookup_appointment", {"name": "Ana Silva"})]),
        Reply("Your next appointment is on Tuesday afternoon with Doctor Lopez."),
    ]
    webhooks_before = counter_value(await metrics(stack, "brain"), "voxline_tool_calls_total", kind="webhook")
    # One sentence: the fake STT hears each pause in the voice as an utterance of its own.
    result = await call(stack, Utterance(text="When is the next appointment for Ana Silva?"))
    assert result.accepted and not result.errors, result.errors
    assert hook.bodies == [{"name": "Ana Silva"}]
    webhooks = counter_value(await metrics(stack, "brain"), "voxline_tool_calls_total", kind="webhook")
    assert webhooks == webhooks_before + 1
    assert replies(result)[0]["reply_text"] == "Your next appointment is on Tuesday afternoon with Doctor Lopez."
    follow_up = chat.requests[1].messages
    assert follow_up[-2]["tool_calls"][0]["function"] == {
        "name": "lookup_appointment",
        "arguments": json.dumps({"name": "Ana Silva"}),
    }
    assert follow_up[-1]["role"] == "tool" and json.loads(follow_up[-1]["content"]) == hook.answer
    assert follow_up[-1]["tool_call_id"] == follow_up[-2]["tool_calls"][0]["id"]
    (tool_call,) = replies(result)[0]["tool_calls"]  # the record keeps the call, its arguments and result
    assert (tool_call["name"], tool_call["kind"]) == ("lookup_appointment", "webhook")
    assert json.loads(tool_call["arguments"]) == {"name": "Ana Silva"}
    assert json.loads(tool_call["result"]) == hook.answer
    assert tool_call["duration_ms"] > 0 and not tool_call["error"] and not tool_call["refused"]
    assert "Ana Silva" not in new_logs.all()  # the caller's data is in the record, not in the logs


async def test_transfer_tool_dials_the_front_desk_through_twilio_rest(
    stack: DevStack, chat: OpenAiChatEmulator, twilio: TwilioRestEmulator
) -> None:
    chat.replies = [Reply("Let me connect you with our front desk.", tool_calls=[("transfer_to_human", {})])]
    result = await call(stack, Utterance(text="I want to talk to a person."), trailing_silence_ms=3000)
    assert result.accepted, result.errors
    assert replies(result)[0]["heard_text"] == "Let me connect you with our front desk."
    await wait_until(lambda: _true(bool(twilio.updated())), 5, "the Twilio calls.update")
    update = twilio.updated()[0]
    assert update.call_sid == result.call_sid
    assert "<Dial " in update.form["Twiml"] and f">{FRONT_DESK}</Dial>" in update.form["Twiml"]
    assert result.closed_by_gateway


async def test_end_call_tool_hangs_up_after_the_goodbye(stack: DevStack, chat: OpenAiChatEmulator) -> None:
    chat.replies = [Reply("Thanks for calling, goodbye.", tool_calls=[("end_call", {})])]
    result = await call(stack, Utterance(text="That is all, thank you."), trailing_silence_ms=3000)
    assert result.accepted, result.errors
    assert result.closed_by_gateway
    assert replies(result)[0]["heard_text"] == "Thanks for calling, goodbye."


async def test_send_dtmf_walks_an_ivr_menu_and_the_record_and_live_events_show_the_tool_call(
    stack: DevStack, chat: OpenAiChatEmulator
) -> None:
    """An outbound call reaches a phone menu: the model presses 2 (send_dtmf), the IVR hears
    the tones in the agent's audio and answers for billing, and the model talks to billing."""
    chat.replies = [
        Reply(tool_calls=[("press_keys", {"digits": "2"})]),
        Reply(""),  # told the keys were sent, the model waits for the next prompt
        Reply("I am calling about invoice one two three four."),
    ]
    # One sentence each: the fake STT takes each pause in the voice for an utterance of its own.
    menu, billing = "For billing press 2.", "This is billing how can I help you?"
    script = CallScript(
        agent_id="walker",
        call_sid=f"CA{uuid.uuid4().hex}",
        from_number="+15005550001",
        to_number="+15005550077",
        direction="outbound-api",
        utterances=[Utterance(text=menu), Utterance(text=billing, after_keys="2")],
        extra_parameters={"fake_transcripts": f"{menu}|{billing}"},
        trailing_silence_ms=300,
    )
    call_task = asyncio.create_task(run_call(stack.gateway_url, script, auth_token=AUTH_TOKEN))
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=httpx.Timeout(10.0, read=60.0)) as http:

        async def started() -> bool:
            return call_task.done() or (await http.get(f"/v1/calls/{script.call_sid}")).status_code == 200

        await wait_until(started, 15.0, "the call's record")
        events = await collect(http, script.call_sid or "")
    result = await call_task
    assert result.accepted and not result.errors, result.errors
    assert result.keys_heard == "2"  # the IVR's DTMF receiver heard the key, once
    told = chat.requests[1].messages[-1]
    assert told["role"] == "tool" and json.loads(told["content"])["status"] == "sent"
    assert chat.requests[2].messages[-1] == {"role": "user", "content": billing}

    turns = replies(result)
    assert [t["kind"] for t in turns] == ["reply", "dtmf", "reply"], turns
    pressed, keys, answer = turns
    (tool_call,) = pressed["tool_calls"]
    assert (tool_call["name"], tool_call["kind"], tool_call["arguments"]) == (
        "press_keys",
        "send_dtmf",
        json.dumps({"digits": "2"}),
    )
    assert json.loads(tool_call["result"])["digits"] == "2" and not tool_call["error"] and not tool_call["refused"]
    assert pressed["caller_text"] == menu and pressed["reply_text"] == ""
    assert keys["dtmf"] == "2" and not keys["interrupted"]
    assert (answer["caller_text"], answer["heard_text"]) == (billing, "I am calling about invoice one two three four.")

    kinds = [e.event for e in events]
    (called,) = [e for e in events if e.event == "tool.called"]
    assert called.data["name"] == "press_keys" and called.data["arguments"] == json.dumps({"digits": "2"})
    assert called.data["turn_id"] == pressed["turn_id"] and called.data["result"] == tool_call["result"]
    ended = [e for e in events if e.event == "turn.ended"]
    assert kinds.index("tool.called") < kinds.index("turn.ended", kinds.index("tool.called"))
    assert [e.data.get("dtmf") for e in ended if e.data["kind"] == "dtmf"] == ["2"]


async def test_barge_in_closes_the_model_stream(stack: DevStack, chat: OpenAiChatEmulator) -> None:
    chat.tokens_per_s = 10
    long = " ".join(["and we also offer many more services to our patients"] * 6) + "."
    chat.replies = [Reply("We offer many dental services. Cleaning is one " + long)]
    result = await call(
        stack,
        Utterance(text="What services do you offer?"),
        Utterance(text="Sorry, what about whitening?", barge_in_after_ms=1000),
    )
    assert result.accepted and not result.errors, result.errors
    assert result.barge_ins and result.barge_ins[0].cancelled_audio_heard_after_ms == 0
    interrupted = chat.requests[0]
    await wait_until(lambda: _true(interrupted.client_closed), 5, "the emulator to see the stream closed")
    assert not interrupted.completed
    first = replies(result)[0]
    assert first["interrupted"] and first["heard_text"], first
    assert first["reply_text"].startswith(first["heard_text"]) and first["heard_text"] != first["reply_text"]


async def test_the_tokens_of_each_reply_are_counted_by_model_and_kind(
    stack: DevStack, chat: OpenAiChatEmulator
) -> None:
    async def tokens(kind: str) -> float:
        text = await metrics(stack, "brain")
        return counter_value(text, "voxline_brain_tokens_total", model="gpt-4o", kind=kind)

    before = {kind: await tokens(kind) for kind in ("prompt", "completion")}
    chat.replies = [Reply("We are open until six today.")]
    result = await call(stack, Utterance(text="Are you open today?"))
    assert result.accepted and not result.errors, result.errors
    (request,) = chat.requests
    assert request.body["stream_options"] == {"include_usage": True} and request.usage is not None
    assert await tokens("prompt") - before["prompt"] == request.usage["prompt_tokens"]
    assert await tokens("completion") - before["completion"] == request.usage["completion_tokens"] == 6


# --- provider errors ------------------------------------------------------------------


async def test_bad_key_apologises_and_never_logs_the_key(
    stack: DevStack, chat: OpenAiChatEmulator, new_logs: LogsSince
) -> None:
    before = await provider_errors(stack, "auth")
    chat.api_key = "sk-the-right-one-is-elsewhere"  # so the brain's key is refused, echoed masked
    try:
        result = await call(stack, Utterance(text="Hello?"))
    finally:
        chat.api_key = DEFAULT_KEY
    assert result.accepted and not result.errors, result.errors
    assert [(t["kind"], t["reply_text"]) for t in replies(result)] == [("apology", APOLOGY)]
    assert await provider_errors(stack, "auth") == before + 1
    logs = all_logs(stack)
    assert "openai auth (status 401)" in new_logs.all()
    assert DEFAULT_KEY not in logs and DEFAULT_KEY[-4:] not in logs


async def test_rate_limit_is_retried_into_a_normal_reply(stack: DevStack, chat: OpenAiChatEmulator) -> None:
    before = await provider_errors(stack, "rate_limited")
    chat.failures = [429]
    chat.replies = [Reply("We are open until six today.")]
    result = await call(stack, Utterance(text="Are you open today?"))
    assert result.accepted and not result.errors, result.errors
    assert [t["reply_text"] for t in replies(result)] == ["We are open until six today."]
    assert [r.status for r in chat.requests] == [429, 200]
    assert await provider_errors(stack, "rate_limited") == before + 1


async def test_stream_dropped_before_the_first_sentence_is_retried(stack: DevStack, chat: OpenAiChatEmulator) -> None:
    chat.failures = ["drop"]
    chat.replies = [Reply("This reply is cut off early, sorry."), Reply("Free parking is behind the building.")]
    result = await call(stack, Utterance(text="Where can I park?"))
    assert result.accepted and not result.errors, result.errors
    assert [t["reply_text"] for t in replies(result)] == ["Free parking is behind the building."]
    assert len(chat.requests) == 2 and not chat.requests[0].completed


async def test_server_errors_twice_apologise(stack: DevStack, chat: OpenAiChatEmulator) -> None:
    chat.failures = [500, 503]
    result = await call(stack, Utterance(text="Hello there?"))
    assert result.accepted and not result.errors, result.errors
    assert [(t["kind"], t["reply_text"]) for t in replies(result)] == [("apology", APOLOGY)]
    assert [r.status for r in chat.requests] == [500, 503]


async def test_stalled_model_apologises_after_the_timeout(stack: DevStack, chat: OpenAiChatEmulator) -> None:
    before = await provider_errors(stack, "timeout")
    chat.failures = ["stall"]
    result = await call(stack, Utterance(text="Is anybody there?"))
    assert result.accepted and not result.errors, result.errors
    assert [(t["kind"], t["reply_text"]) for t in replies(result)] == [("apology", APOLOGY)]
    assert await provider_errors(stack, "timeout") == before + 1
    assert chat.requests[0].client_closed or not chat.requests[0].completed


# --- latency --------------------------------------------------------------------------


async def test_turn_latency_at_gpt4o_time_to_first_token(stack: DevStack, chat: OpenAiChatEmulator) -> None:
    """Measured, not asserted: what a turn costs when the model answers like GPT-4o."""
    chat.ttft_ms, chat.tokens_per_s = 400, 80
    texts = ["When are you open?", "Do you take Aetna?", "Where can I park?"]
    result = await call(stack, *[Utterance(text=t) for t in texts])
    assert result.accepted and not result.errors, result.errors
    latencies = [t.first_media_latency_ms for t in result.turns]
    stages = [t.get("latency", {}) for t in replies(result)]
    print(f"\nspeech end -> first reply audio (ms) at TTFT 400 ms: {latencies}")
    for stage in stages:
        print("  stages (ms):", {k: round(v) for k, v in stage.items()})
    assert all(latency is not None for latency in latencies)


async def _true(value: bool) -> bool:
    return value
