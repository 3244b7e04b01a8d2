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
STT_PING_INTERVAL_S = 1.0
MAX_STT_REASSIGNMENTS = 2
STT_PING_TIMEOUT_S = 0.5
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
        self._assigns: dict[str, SttAssign] = {}
        self._stt_worker: dict[str, str] = {}  # call id -> the STT worker holding its audio
        self._stt_misses: dict[str, int] = {}
        self._liveness: asyncio.Task[None] | None = None

    async def start(self) -> None:
        js = self.bus.nc.jetstream()
        self._kv = await js.create_key_value(bucket=CALL_RECORDS_BUCKET, history=1, ttl=7 * 24 * 3600)
        self._own.append(
            await self.bus.nc.subscribe(subjects.CALL_START, queue=subjects.QUEUE_ORCHESTRATOR, cb=self._on_call_start)
        )
        self._liveness = asyncio.create_task(self._watch_stt_workers())

    def ready(self) -> bool:
        return self._kv is not None

    def status(self) -> dict[str, Any]:
        return {
            "active_calls": len(self.calls),
            "calls": {cid: call.state.value for cid, call in self.calls.items()},
            "subscriptions": sum(len(s) for s in self._subs.values()),
        }

    async def stop(self) -> None:
        if self._liveness is not None:
            self._liveness.cancel()
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

        reassignments = 0

        async def reassign() -> bool:
            # A provider that keeps failing would otherwise bounce the call forever.
            nonlocal reassignments
            reassignments += 1
            return reassignments <= MAX_STT_REASSIGNMENTS and await self._assign_stt(assign) is None

        self._assigns[start.call_id] = assign

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
        self._stt_worker[assign.call_id] = reply.worker_id
        log.info("stt worker %s (%s) listens to the call", reply.worker_id, reply.provider)
        return None

    async def _watch_stt_workers(self) -> None:
        """Ping every STT worker that holds a call; two missed pings and its calls move.

        Brain and TTS requests go to queue groups and have per-request watchdogs; only the
        STT is sticky, so only its death would leave a caller unheard."""
        while True:
            await asyncio.sleep(STT_PING_INTERVAL_S)
            for worker_id in set(self._stt_worker.values()):
                try:
                    await self.bus.ping(subjects.stt_ping(worker_id), STT_PING_TIMEOUT_S)
                    self._stt_misses.pop(worker_id, None)
                    continue
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    misses = self._stt_misses[worker_id] = self._stt_misses.get(worker_id, 0) + 1
                except Exception as exc:  # the bus itself is reconnecting: not the worker's fault
                    log.warning("stt ping failed: %s", exc)
                    continue
                if misses >= 2:
                    self._stt_misses.pop(worker_id, None)
                    await self._move_calls_of(worker_id)

    async def _move_calls_of(self, worker_id: str) -> None:
        moved = [cid for cid, wid in self._stt_worker.items() if wid == worker_id]
        log.error("stt worker %s is gone; moving its %d calls", worker_id, len(moved))
        for call_id in moved:
            self._stt_worker.pop(call_id, None)
            assign, call = self._assigns.get(call_id), self.calls.get(call_id)
            if assign is None or call is None:
                continue
            refusal = await self._assign_stt(assign)
            if refusal:
                await call.fail(refusal)
            else:
                log.info("call reassigned to another stt worker", extra={"call_id": call_id})

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
        self._assigns.pop(call_id, None)
        self._stt_worker.pop(call_id, None)
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
