"""The brain worker: answers turns from a queue group, one asyncio task per turn, and
streams the reply to the orchestrator sentence by sentence.

A turn's task is cancelled the moment the orchestrator cancels the turn (barge-in) or the
call ends; cancelling it closes the provider's stream, so a reply nobody will hear stops
costing tokens, and nothing more of it is published.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Gauge

from proto import subjects
from proto.messages import BrainTurn, CallEnded, Message, ReplyDone, ReplyError, ReplySentence, TurnCancel
from services.brain.providers import BrainProvider, ReplyAction, make_provider
from services.brain.sentences import SentenceSplitter
from services.common import (
    STOP_GRACE_S,
    ProviderError,
    TurnTasks,
    call_context,
    close_stream,
    outgoing_headers,
    unsubscribe_quietly,
)
from voxline.bus import Bus
from voxline.config import BrainSettings
from voxline.telemetry import now_us, stage_histogram

log = logging.getLogger("voxline.brain")

ACTIVE_TURNS = Gauge("voxline_brain_active_turns", "Turns this brain worker is answering.")
FIRST_SENTENCE = stage_histogram(
    "voxline_brain_first_sentence_seconds", "Brain request sent to the reply's first complete sentence."
)


class BrainWorker:
    def __init__(self, bus: Bus, settings: BrainSettings, provider: BrainProvider) -> None:
        self.bus = bus
        self.settings = settings
        self.provider = provider
        self.tasks = TurnTasks()
        self._work: list[Subscription] = []
        self._control: list[Subscription] = []
        self._ready = False
        self._stopping = False
        ACTIVE_TURNS.set_function(self.tasks.active)

    async def start(self) -> None:
        # Cancels and call ends first: they must never miss a turn that is already running.
        self._control = [
            await self.bus.subscribe(subjects.ALL_TURN_CANCELS, self.on_cancel),
            await self.bus.subscribe(subjects.CALL_ENDED, self.on_call_ended),
        ]
        self._work = [await self.bus.subscribe(subjects.BRAIN_TURN, self.on_turn, queue=subjects.QUEUE_BRAIN)]
        self._ready = True

    def ready(self) -> bool:
        return self._ready

    def status(self) -> dict[str, Any]:
        return {"provider": self.provider.name, "active_turns": self.tasks.active(), "turns": self.tasks.turns()}

    async def on_turn(self, message: Message, msg: Msg) -> None:
        if not isinstance(message, BrainTurn):
            log.warning("ignored %s on %s", type(message).__name__, msg.subject)
            return
        with call_context(message.call_id, message.turn_id):
            if not self.tasks.accepts(message.call_id, message.turn_id):
                log.info("turn already cancelled or call ended; not answered")
                return
            headers = outgoing_headers(msg, message.call_id, message.turn_id, "brain")
            self.tasks.start(
                message.call_id,
                message.turn_id,
                self._answer(message, headers),
                name=f"brain-{message.call_id}-{message.turn_id}",
            )

    async def on_cancel(self, message: Message, msg: Msg) -> None:
        if not isinstance(message, TurnCancel):
            log.warning("ignored %s on %s", type(message).__name__, msg.subject)
            return
        with call_context(message.call_id, message.turn_id):
            if cancelled := self.tasks.cancel_turns(message.call_id, message.turn_id):
                log.info("stopped %d turn(s) up to %d: %s", cancelled, message.turn_id, message.reason)

    async def on_call_ended(self, message: Message, msg: Msg) -> None:
        if not isinstance(message, CallEnded):
            log.warning("ignored %s on %s", type(message).__name__, msg.subject)
            return
        with call_context(message.call_id):
            if cancelled := self.tasks.end_call(message.call_id):
                log.info("call ended (%s); stopped %d turn(s)", message.reason, cancelled)

    async def _answer(self, turn: BrainTurn, headers: dict[str, str]) -> None:
        received_us = now_us()
        subject = subjects.reply_text(turn.call_id)
        splitter = SentenceSplitter()
        sent = 0
        first_token_us = 0
        action = ReplyAction("")

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
            )
            sent += 1
            await self._publish(subject, sentence, headers)

        stall_s = self.settings.brain_stall_timeout_s
        loop = asyncio.get_running_loop()
        stream = self.provider.stream(turn)
        try:
            # A hung LLM must not leave the caller in silence: no output for `stall_s`
            # (before the first token or between two) fails the turn.
            async with asyncio.timeout(stall_s) as deadline:
                async for delta in stream:
                    if isinstance(delta, ReplyAction):
                        action = delta  # sent with ReplyDone: acted on once the reply was heard
                        continue
                    first_token_us = first_token_us or now_us()
                    for text in splitter.feed(delta):
                        await send(text)
                    deadline.reschedule(loop.time() + stall_s)
            for text in splitter.flush():
                await send(text)
            done = ReplyDone(
                call_id=turn.call_id,
                turn_id=turn.turn_id,
                sentences=sent,
                at_us=now_us(),
                action=action.action,
                action_arg=action.arg,
            )
            await self._publish(subject, done, headers)
        except asyncio.CancelledError:
            if self._stopping and not self.tasks.is_cancelled(turn.call_id, turn.turn_id):
                await self._fail(turn, headers, "brain worker stopped mid-reply")
            raise
        except TimeoutError:
            log.error("brain provider %s stalled for %.1fs on call %s", self.provider.name, stall_s, turn.call_id)
            await self._fail(turn, headers, f"{self.provider.name}: no output for {stall_s}s")
        except ProviderError as exc:  # already logged with its outcome; no traceback needed
            log.error("brain provider failed on call %s: %s", turn.call_id, exc)
            await self._fail(turn, headers, str(exc))
        except Exception as exc:
            log.exception("brain provider %s failed on call %s", self.provider.name, turn.call_id)
            await self._fail(turn, headers, f"{self.provider.name}: {exc}")
        finally:
            await close_stream(stream)

    async def _fail(self, turn: BrainTurn, headers: dict[str, str], reason: str) -> None:
        error = ReplyError(call_id=turn.call_id, turn_id=turn.turn_id, message=reason)
        await self._publish(subjects.reply_text(turn.call_id), error, headers)

    async def _publish(self, subject: str, message: Message, headers: dict[str, str]) -> None:
        try:
            await self.bus.publish(subject, message, headers)
        except Exception:
            log.exception("could not publish %s", type(message).__name__)

    async def stop(self) -> None:
        """Finish in-flight replies (briefly), then cancel the rest with a ReplyError each,
        so the orchestrator can apologise or retry instead of waiting."""
        self._ready = False
        self._stopping = True
        for sub in self._work:
            await unsubscribe_quietly(sub)
        await self.tasks.drain(STOP_GRACE_S)
        for sub in self._control:
            await unsubscribe_quietly(sub)
        try:
            await self.provider.close()
        except Exception:
            log.exception("brain provider %s failed to close", self.provider.name)


async def start(bus: Bus, settings: BrainSettings) -> BrainWorker:
    provider = make_provider(settings.brain_provider, settings)
    load = getattr(provider, "load", None)
    if load is not None:  # local models load and warm up before the worker reports ready
        await load()
    worker = BrainWorker(bus, settings, provider)
    await worker.start()
    return worker
