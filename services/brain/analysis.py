"""The post-call analysis: after the hang-up the call's orchestrator asks a brain worker
(`BRAIN_ANALYSE`, request/reply on the brain queue group) for a summary and the structured
fields the agent's `[analysis]` asks for (voxline/agents/analysis.py).

The OpenAI-compatible provider (OpenAI, and llama-server for the offline profile) answers
with one non-streamed chat completion whose `response_format` is a strict JSON schema built
from the agent's fields plus `summary` (`response_format`): OpenAI's Structured Outputs
(https://platform.openai.com/docs/guides/structured-outputs: every property required,
`additionalProperties: false`, optional values as a union with `null`), which llama-server
turns into a grammar (it reads `response_format.json_schema.schema`). The answer is checked
against the schema all the same (`parse_answer`): a model or server that ignores the schema
makes the analysis `failed` with the reason, never a crash and never a wrong field.

The fake provider's analysis is deterministic and says what it is: its summary quotes the
caller's lines behind "Fake analysis (no model)", and every field is null.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from proto import subjects
from proto.messages import AnalysisField, AnalysisRequest, AnalysisResult, FieldValue, LlmUsage, Message, TranscriptLine
from services.common import drain_quietly
from services.providers import FallbackChain, Provider
from voxline.bus import Bus
from voxline.telemetry import current_call_id

if TYPE_CHECKING:
    from openai import AsyncOpenAI
    from openai.types.chat import ChatCompletion

log = logging.getLogger("voxline.brain.analysis")

SCHEMA_NAME = "call_analysis"
MAX_TOKENS = 600  # a few sentences of summary and a form; reasoning models get more (openai_chat)
MAX_CONCURRENT = 4  # analyses one worker runs at once; the rest wait (replies come first)
MARGIN_S = 0.5  # the answer must reach the orchestrator before it stops waiting
CUT = "[... part of the call left out ...]"
FAKE_PREFIX = "Fake analysis (no model): "
SYSTEM = (
    "You analyse a finished phone call between a caller and an AI phone agent. Answer with one JSON object "
    "that follows the given schema. Use only what the transcript says: when it does not tell a field, put null."
)
SUMMARY = "summary: two or three sentences on what the caller wanted and how the call ended."


class AnalysisInvalid(ValueError):
    """The model's answer is not what the schema asks for."""


@runtime_checkable
class Analyser(Protocol):
    name: str

    async def analyse(self, request: AnalysisRequest) -> AnalysisResult: ...


# --- what the model is asked ------------------------------------------------------------


def property_schema(spec: AnalysisField) -> dict[str, Any]:
    """A field as a strict-mode property: nullable (a union with null), its enum with null."""
    prop: dict[str, Any] = {"type": [spec.type, "null"]}
    if spec.description:
        prop["description"] = spec.description
    if spec.enum is not None:
        prop["enum"] = [*spec.enum, None]
    return prop


def answer_schema(request: AnalysisRequest) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    if request.summary:
        properties["summary"] = {"type": "string", "description": "What the caller wanted and how the call ended."}
    for name, spec in request.fields.items():
        properties[name] = property_schema(spec)
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def response_format(request: AnalysisRequest) -> dict[str, Any]:
    """OpenAI's `response_format` for Structured Outputs (strict)."""
    schema = answer_schema(request)
    return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": schema}}


def transcript_text(lines: list[TranscriptLine], max_chars: int) -> str:
    """The lines as `Caller: ...` / `Agent: ...`; a call longer than `max_chars` keeps its
    first quarter and its end (how it ended matters most), the middle marked as left out."""
    text = [f"{line.speaker.capitalize()}: {line.text}" for line in lines]
    if sum(len(t) + 1 for t in text) <= max_chars:
        return "\n".join(text)
    head: list[str] = []
    tail: list[str] = []
    budget = max_chars // 4
    for line in text:
        if len(line) + 1 > budget:
            break
        head.append(line)
        budget -= len(line) + 1
    budget = max_chars - sum(len(t) + 1 for t in head) - len(CUT) - 1
    for line in reversed(text[len(head) :]):
        if len(line) + 1 > budget:
            break
        tail.insert(0, line)
        budget -= len(line) + 1
    return "\n".join([*head, CUT, *tail])


def messages(request: AnalysisRequest, max_chars: int) -> list[dict[str, str]]:
    system = SYSTEM
    if request.summary:
        system += "\n" + SUMMARY
    if request.instructions:
        system += f"\nThe agent's owner adds: {request.instructions}"
    said = transcript_text(request.lines, max_chars) if request.lines else "(nobody said anything)"
    user = f"The call ended ({request.end_reason or 'hang-up'}). Transcript:\n{said}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# --- what the model answered ------------------------------------------------------------


def field_value(name: str, spec: AnalysisField, value: Any) -> FieldValue:
    if value is None:
        return None
    ok = {
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
    }[spec.type]
    if spec.type == "integer" and isinstance(value, float) and value.is_integer():
        value, ok = int(value), True  # 3.0 is the integer 3 in JSON Schema
    if not ok:
        raise AnalysisInvalid(f"field {name!r} is not a {spec.type} ({type(value).__name__})")
    if spec.enum is not None and value not in spec.enum:
        raise AnalysisInvalid(f"field {name!r} is not one of its enum values")
    assert isinstance(value, str | int | float | bool)
    return value


def parse_answer(request: AnalysisRequest, content: str) -> tuple[str, dict[str, FieldValue]]:
    """The summary and the fields from the model's JSON, checked against the schema asked
    for; AnalysisInvalid saying what is wrong, naming the agent's fields but quoting nothing
    the model wrote (it may repeat the caller's words, and the reason goes to the logs)."""
    try:
        answer = json.loads(content)
    except (json.JSONDecodeError, RecursionError):
        raise AnalysisInvalid("the answer is not JSON") from None
    if not isinstance(answer, dict):
        raise AnalysisInvalid("the answer is not a JSON object")
    expected = ({"summary"} if request.summary else set()) | set(request.fields)
    if missing := sorted(expected - set(answer)):
        raise AnalysisInvalid(f"the answer lacks {missing[0]!r}")
    if extra := sorted(set(answer) - expected):
        raise AnalysisInvalid(f"the answer has {len(extra)} key(s) the schema does not")
    summary = answer.get("summary", "")
    if request.summary and not isinstance(summary, str):
        raise AnalysisInvalid("summary is not a string")
    fields = {name: field_value(name, spec, answer[name]) for name, spec in request.fields.items()}
    return (summary.strip() if isinstance(summary, str) else ""), fields


# --- providers ----------------------------------------------------------------------------


def fake_analysis(request: AnalysisRequest) -> AnalysisResult:
    """Deterministic, and honest about it: no model read the call."""
    said = [line.text.strip() for line in request.lines if line.speaker == "caller" and line.text.strip()]
    summary = FAKE_PREFIX + (f"the caller said: {' | '.join(said)}"[:400] if said else "the caller said nothing.")
    return AnalysisResult(
        call_id=request.call_id,
        status="done",
        summary=summary if request.summary else "",
        fields=dict.fromkeys(request.fields),
        provider="fake",
        model="none",
    )


def result_failed(request: AnalysisRequest, provider: str, model: str, error: str) -> AnalysisResult:
    return AnalysisResult(call_id=request.call_id, status="failed", provider=provider, model=model, error=error)


async def openai_analysis(
    client: AsyncOpenAI,
    provider: str,
    model: str,
    request: AnalysisRequest,
    max_chars: int,
    extra: dict[str, Any],
) -> AnalysisResult:
    """One non-streamed completion with the strict schema; `extra`: the provider's own
    arguments (temperature, the token cap, llama-server's `cache_prompt`)."""
    import openai  # imported by the brains that run an OpenAI-compatible provider only

    create: Any = client.chat.completions.create  # the arguments are built as plain dicts
    try:
        completion: ChatCompletion = await create(
            model=model,
            messages=messages(request, max_chars),
            response_format=response_format(request),
            timeout=max(1.0, request.timeout_ms / 1000 - MARGIN_S),  # a local model answers only when done
            **extra,
        )
    except openai.APIStatusError as exc:  # the body may echo a masked key: never passed on
        return result_failed(request, provider, model, f"{provider} answered HTTP {exc.status_code}")
    except openai.APITimeoutError:
        return result_failed(request, provider, model, f"{provider} timed out")
    except openai.APIError as exc:
        return result_failed(request, provider, model, f"{provider} unreachable: {type(exc).__name__}")
    usage = completion.usage
    tokens = LlmUsage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens) if usage else None
    if not completion.choices:
        return result_failed(request, provider, model, "the model gave no choice")
    choice = completion.choices[0]
    if choice.message.refusal:
        return result_failed(request, provider, model, "the model refused to answer")
    if choice.finish_reason in ("length", "content_filter"):
        return result_failed(request, provider, model, f"the answer was cut off (finish_reason {choice.finish_reason})")
    try:
        summary, fields = parse_answer(request, choice.message.content or "")
    except AnalysisInvalid as exc:
        log.warning("analysis answer of %s rejected: %s", model, exc)
        return result_failed(request, provider, model, f"the model's answer is outside the schema: {exc}")
    return AnalysisResult(
        call_id=request.call_id,
        status="done",
        summary=summary,
        fields=fields,
        provider=provider,
        model=model,
        usage=tokens,
    )


def analysers(provider: Provider) -> list[Analyser]:
    """The providers that can analyse, in the brain's fallback order."""
    chain = provider.providers if isinstance(provider, FallbackChain) else [provider]
    return [p for p in chain if isinstance(p, Analyser)]


async def analyse(provider: Provider, request: AnalysisRequest) -> AnalysisResult:
    """The first provider's `done` answer, else the last failure; bounded by the request's
    timeout (less a margin, so the orchestrator still hears why)."""
    candidates = analysers(provider)
    if not candidates:
        return result_failed(request, provider.name, "", f"brain provider {provider.name} cannot analyse calls")
    result: AnalysisResult | None = None
    try:
        async with asyncio.timeout(max(0.1, request.timeout_ms / 1000 - MARGIN_S)):
            for candidate in candidates:
                result = await candidate.analyse(request)
                if result.status == "done":
                    return result
    except TimeoutError:
        return result_failed(request, provider.name, "", f"the model took longer than {request.timeout_ms} ms")
    except Exception as exc:  # a provider bug must still answer the orchestrator
        log.exception("analysis by %s failed", provider.name)
        return result_failed(request, provider.name, "", f"internal error: {type(exc).__name__}")
    assert result is not None
    return result


class AnalysisService:
    """Answers `BRAIN_ANALYSE` in the brain queue group, each request in a task of its own
    (a slow model holds up no other analysis and no reply), `MAX_CONCURRENT` at once."""

    def __init__(self, bus: Bus, provider: Provider) -> None:
        self.bus = bus
        self.provider = provider
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)

    async def start(self) -> None:
        self._sub = await self.bus.subscribe(subjects.BRAIN_ANALYSE, self._on_request, queue=subjects.QUEUE_BRAIN)

    async def _on_request(self, message: Message, msg: Msg) -> None:
        if not isinstance(message, AnalysisRequest) or not msg.reply:
            log.warning("ignored %s on %s", type(message).__name__, msg.subject)
            return
        task = asyncio.create_task(self._answer(message, msg), name=f"analysis-{message.call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, request: AnalysisRequest, msg: Msg) -> None:
        current_call_id.set(request.call_id)
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        async with self._slots:  # the wait for a slot counts against the orchestrator's timeout
            waited_ms = int((loop.time() - arrived) * 1000)
            left = msgspec.structs.replace(request, timeout_ms=max(0, request.timeout_ms - waited_ms))
            result = await analyse(self.provider, left)
        log.info("post-call analysis %s by %s", result.status, result.provider or self.provider.name)
        try:
            await self.bus.respond(msg, result)
        except Exception as exc:
            log.error("could not answer the analysis request: %s", exc)

    async def _leave(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await drain_quietly(sub)  # requests already on their way are still answered

    async def drain(self) -> None:
        """Take no new analysis; finish those under way (each bounded by its timeout)."""
        await self._leave()
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    async def stop(self, grace_s: float) -> None:
        await self._leave()
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=grace_s)
            for task in late:
                task.cancel()  # the orchestrator's timeout records the failure
