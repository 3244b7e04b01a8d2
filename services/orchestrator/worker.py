"""The orchestrator worker: takes ownership of new calls and routes each call's events to
its state machine.

Ownership is sticky: the instance that answers a CallStart request subscribes to that
call's subjects alone, so all of a call's state lives in one process while calls spread
over all instances through the queue group.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue
from prometheus_client import Gauge

from proto import subjects
from proto.codec import decode, encode
from proto.headers import TRACEPARENT
from proto.messages import (
    CallAccepted,
    CallEnded,
    CallRefused,
    CallStart,
    CallStopped,
    Message,
    SttAssign,
    SttAssigned,
)
from proto.records import CALL_RECORDS_BUCKET, CallRecord
from services.orchestrator.call import Call
from voxline.agents import AgentStore, UnknownAgent
from voxline.bus import Bus, MessageHandler
from voxline.config import OrchestratorSettings
from voxline.telemetry import current_call_id, new_traceparent, stage_histogram

log = logging.getLogger("voxline.orchestrator")

ACTIVE_CALLS = Gauge("voxline_orchestrator_active_calls", "Calls owned by this orchestrator")
TURN_LATENCY = stage_histogram(
    "voxline_orchestrator_turn_latency_seconds", "Caller speech end to first reply audio sent, per turn"
)
REFUSED = Gauge("voxline_orchestrator_refused_calls", "Calls refused since start")


class Orchestrator:
    def __init__(self, bus: Bus, settings: OrchestratorSettings) -> None:
        self.bus = bus
        self.settings = settings
        self.agents = AgentStore(settings.agents_dir)
        self.calls: dict[str, Call] = {}
        self._subs: dict[str, list[Subscription]] = {}
        self._kv: KeyValue | None = None
        self._own: list[Subscription] = []
        self._ending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        js = self.bus.nc.jetstream()
        self._kv = await js.create_key_value(bucket=CALL_RECORDS_BUCKET, history=1, ttl=7 * 24 * 3600)
        self._own.append(
            await self.bus.nc.subscribe(subjects.CALL_START, queue=subjects.QUEUE_ORCHESTRATOR, cb=self._on_call_start)
        )

    def ready(self) -> bool:
        return self._kv is not None

    def status(self) -> dict[str, Any]:
        return {
            "active_calls": len(self.calls),
            "calls": {cid: call.state.value for cid, call in self.calls.items()},
            "subscriptions": sum(len(s) for s in self._subs.values()),
        }

    async def stop(self) -> None:
        for call_id in list(self.calls):
            await self._end_call(call_id, "orchestrator shutting down")

    async def save(self, record: CallRecord) -> None:
        if self._kv is None:
            return
        try:
            await self._kv.put(record.call_id, msgspec.json.encode(record))
        except Exception as exc:  # the record is best effort; the call goes on
            log.error("could not save the call record: %s", exc)

    async def _on_call_start(self, msg: Msg) -> None:
        try:
            start = decode(msg.data)
        except Exception as exc:
            log.error("bad call start request: %s", exc)
            return
        if not isinstance(start, CallStart):
            return
        current_call_id.set(start.call_id)
        refusal = await self._take_call(start, (msg.headers or {}).get(TRACEPARENT, ""))
        if refusal:
            REFUSED.inc()
            log.error("refused call: %s", refusal)
            await msg.respond(encode(CallRefused(call_id=start.call_id, reason=refusal)))
        else:
            await msg.respond(encode(CallAccepted(call_id=start.call_id, orchestrator_id=self.settings.instance_id)))
            await self.calls[start.call_id].greet(start.started_at_us)

    async def _take_call(self, start: CallStart, traceparent: str) -> str:
        if start.call_id in self.calls:
            return ""
        try:
            agent = self.agents.get(start.agent_id)
        except UnknownAgent as exc:
            return str(exc)
        except Exception as exc:
            return f"agent {start.agent_id!r} is invalid: {exc}"
        assign = SttAssign(
            call_id=start.call_id,
            agent_id=agent.id,
            language=agent.language,
            keywords=agent.keywords,
            custom_parameters=start.custom_parameters,
            pause_ms=agent.turn.stt_pause_ms,
        )
        refusal = await self._assign_stt(assign)
        if refusal:
            return refusal

        async def reassign() -> bool:
            return await self._assign_stt(assign) is None

        call = Call(
            self.bus, start, agent, self.settings, traceparent or new_traceparent(None, "call"), self.save, reassign
        )
        self.calls[start.call_id] = call
        ACTIVE_CALLS.set(len(self.calls))
        handler = self._route(start.call_id)
        self._subs[start.call_id] = [
            await self.bus.subscribe(subject, handler)
            for subject in (
                subjects.gateway_events(start.call_id),
                subjects.stt_events(start.call_id),
                subjects.reply_text(start.call_id),
                subjects.tts_events(start.call_id),
            )
        ]
        await call.save_initial()
        log.info("call taken: agent %s", agent.id)
        return ""

    async def _assign_stt(self, assign: SttAssign) -> str | None:
        """Ask the STT queue group for a worker; None when one took the call."""
        try:
            reply = await self.bus.request(subjects.STT_ASSIGN, assign, timeout=self.settings.stt_assign_timeout_s)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return "no speech-to-text worker available"
        if not isinstance(reply, SttAssigned):
            return f"speech-to-text worker refused the call ({type(reply).__name__})"
        log.info("stt worker %s (%s) listens to the call", reply.worker_id, reply.provider)
        return None

    def _route(self, call_id: str) -> MessageHandler:
        async def handler(message: Message, _msg: Msg) -> None:
            call = self.calls.get(call_id)
            if call is None:
                return
            if isinstance(message, CallStopped):
                # Not awaited here: ending unsubscribes this very subscription, and
                # nats-py cancels a subscription's task on unsubscribe.
                task = asyncio.create_task(self._end_call(call_id, message.reason))
                self._ending.add(task)
                task.add_done_callback(self._ending.discard)
                return
            await call.handle(message)
            latency = call.take_turn_latency()
            if latency is not None:
                TURN_LATENCY.observe(latency)

        return handler

    async def _end_call(self, call_id: str, reason: str) -> None:
        call = self.calls.pop(call_id, None)
        ACTIVE_CALLS.set(len(self.calls))
        if call is not None:
            await call.end(reason)
            await self.bus.publish(subjects.CALL_ENDED, CallEnded(call_id=call_id, reason=reason))
            log.info("call ended: %s", reason, extra={"call_id": call_id})
        for sub in self._subs.pop(call_id, []):
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection may be going away at shutdown
                log.debug("unsubscribe failed: %s", exc)


async def start(bus: Bus, settings: OrchestratorSettings) -> Orchestrator:
    worker = Orchestrator(bus, settings)
    await worker.start()
    return worker
