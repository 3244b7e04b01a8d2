"""The brain worker: answers turns from a queue group, one asyncio task per turn, and
streams the reply to the orchestrator sentence by sentence.

While it holds a turn the worker says so (ReplyProgress, as it takes the turn and every
`brain_heartbeat_s`): the orchestrator then tells a worker that died mid-turn from a slow
provider within a couple of seconds, and asks another worker.

A turn's task is cancelled the moment the orchestrator cancels the turn (barge-in) or the
call ends; cancelling it closes the provider's stream, so a reply nobody will hear stops
costing tokens, and nothing more of it is published.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Gauge

from proto import subjects
from proto.messages import BrainTurn, LlmUsage, ReplyDone, ReplyError, ReplyProgress, ReplySentence, ToolCallReport
from services.brain.analysis import AnalysisService
from services.brain.providers import (
    BrainEvent,
    BrainProvider,
    FirstToken,
    ReplyAction,
    Sentence,
    ToolCalled,
    Usage,
    make_provider,
)
from services.common import STOP_GRACE_S, TurnWorker, WorkKind, launch
from voxline import tracing
from voxline.agents import shared_store
from voxline.bus import Bus
from voxline.config import BrainSettings
from voxline.telemetry import now_us, stage_histogram

log = logging.getLogger("voxline.brain")

ACTIVE_TURNS = Gauge("voxline_brain_active_turns", "Turns this brain worker is answering.")
FIRST_SENTENCE = stage_histogram(
    "voxline_brain_first_sentence_seconds", "Brain request sent to the reply's first complete sentence."
)
BRAIN = WorkKind("brain", subjects.BRAIN_TURN, subjects.QUEUE_BRAIN, unit="reply", output="output")


class BrainWorker(TurnWorker[BrainTurn, BrainProvider]):
    def __init__(self, bus: Bus, settings: BrainSettings, provider: BrainProvider) -> None:
        super().__init__(
            bus,
            provider,
            BRAIN,
            BrainTurn,
            settings.brain_stall_timeout_s,
            ACTIVE_TURNS,
            capacity=settings.brain_max_turns,
            worker_id=settings.instance_id,
        )
        self.settings = settings
        self.analyses = AnalysisService(bus, provider)  # post-call analyses, beside the turns

    async def start(self) -> None:
        await super().start()
        await self.analyses.start()

    async def drain(self) -> None:
        await self.analyses.drain()
        await super().drain()

    async def stop(self) -> None:
        await self.analyses.stop(STOP_GRACE_S)
        await super().stop()

    async def work(self, turn: BrainTurn, headers: dict[str, str]) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(turn, headers), name=f"brain-heartbeat-{turn.call_id}")
        try:
            await self._answer(turn, headers)
        finally:
            heartbeat.cancel()

    async def _heartbeat(self, turn: BrainTurn, headers: dict[str, str]) -> None:
        """Tell the call's owner this worker holds the turn, until the turn ends."""
        subject = subjects.reply_text(turn.call_id)
        while True:
            progress = ReplyProgress(
                call_id=turn.call_id,
                turn_id=turn.turn_id,
                attempt=turn.attempt,
                worker_id=self.settings.instance_id,
                at_us=now_us(),
            )
            await self.publish(subject, progress, headers)
            await asyncio.sleep(self.settings.brain_heartbeat_s)

    async def _answer(self, turn: BrainTurn, headers: dict[str, str]) -> None:
        received_us = now_us()
        subject = subjects.reply_text(turn.call_id)
        sent = 0
        first_token_us = 0
        action = ReplyAction("")
        usage: LlmUsage | None = None  # summed over the reply's rounds and tries
        tool_calls: list[ToolCallReport] = []  # every round's and try's, in order: for the record

        async def send(text: str) -> None:
            nonlocal sent
            at = now_us()
            if sent == 0:
                FIRST_SENTENCE.observe(max(0, at - turn.requested_at_us) / 1e6)
            sentence = ReplySentence(
                call_id=turn.call_id,
                turn_id=turn.turn_id,
                seq=sent,
                text=text,
                at_us=at,
                first_token_us=first_token_us,
                provider_ms=(at - received_us) / 1000,
                attempt=turn.attempt,
            )
            sent += 1
            tracing.add_event("sentence", {"seq": sentence.seq})
            await self.publish(subject, sentence, headers)

        async def take(event: BrainEvent) -> None:
            nonlocal action, first_token_us, usage
            if isinstance(event, Usage):
                before = usage or LlmUsage()
                usage = LlmUsage(
                    prompt_tokens=before.prompt_tokens + event.prompt_tokens,
                    completion_tokens=before.completion_tokens + event.completion_tokens,
                )
            elif isinstance(event, FirstToken):
                if not first_token_us:  # of the first try, if retried
                    first_token_us = event.at_us
                    tracing.add_event("first token")
            elif isinstance(event, Sentence):
                await send(event.text)
            elif isinstance(event, ToolCalled):
                tool_calls.append(event.report)
            else:
                action = event  # sent with ReplyDone: acted on once the reply was heard

        async def fail(reason: str) -> None:
            error = ReplyError(
                call_id=turn.call_id, turn_id=turn.turn_id, message=reason, attempt=turn.attempt, tool_calls=tool_calls
            )
            await self.publish(subject, error, headers)

        if not await self.consume(turn, self.provider.stream(turn), take, fail):
            return
        done = ReplyDone(
            call_id=turn.call_id,
            turn_id=turn.turn_id,
            attempt=turn.attempt,
            sentences=sent,
            at_us=now_us(),
            action=action.action,
            action_arg=action.arg,
            usage=usage,
            tool_calls=tool_calls,
        )
        await self.publish(subject, done, headers)


async def start(bus: Bus, settings: BrainSettings) -> BrainWorker:
    # The providers that read agents share this store: it follows the agents bucket, and the
    # knowledge documents uploaded through the API, from here.
    await shared_store(settings.agents_dir).start(bus, knowledge=True)
    return await launch(BrainWorker(bus, settings, make_provider(settings.brain_provider, settings)))
