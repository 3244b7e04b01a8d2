"""The orchestrator worker: takes ownership of new calls and posts each call's events to
its actor.

Ownership is sticky: the instance that answers a CallStart request takes the call's lease
(`ownership.py`) and subscribes to that call's subjects alone, so all of a call's state
lives in one process while calls spread over all instances through the queue group. A
subscription only posts to the call's queue; the call's own task handles its events one at
a time (`actor.py`), and its state is snapshotted as it goes. When an owner dies, another
instance takes the lease over and resumes the call from the snapshot; a stopping instance
hands its calls over on purpose.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry.trace import Span
from prometheus_client import Counter, Gauge

from proto import subjects
from proto.headers import call_headers
from proto.messages import (
    CallAccepted,
    CallEnded,
    CallRefused,
    CallStart,
    CallStopped,
    Message,
    StreamResume,
    SttAssign,
    SttAssigned,
    SttRelease,
    Transcript,
)
from proto.records import CALL_RECORDS_BUCKET, CallRecord
from services.common import QueueSeat
from services.orchestrator import analysis
from services.orchestrator.actor import CallActor
from services.orchestrator.call import Call, CallLimits, new_call
from services.orchestrator.events import Greet, SttLost
from services.orchestrator.failover import Failover
from services.orchestrator.liveness import PeerWatch
from services.orchestrator.ownership import LeaseTimes, Ownership
from services.orchestrator.states import CallState
from voxline import tracing
from voxline.agents import AgentStore, UnknownAgent
from voxline.bus import Bus, MessageHandler
from voxline.config import OrchestratorSettings
from voxline.telemetry import current_call_id, now_us
from voxline.webhooks.dispatcher import RetryPolicy, WebhookDispatcher

log = logging.getLogger("voxline.orchestrator")

ACTIVE_CALLS = Gauge("voxline_orchestrator_active_calls", "Calls owned by this orchestrator")
MAX_STT_REASSIGNMENTS = 2
NO_STT_WORKER = "no speech-to-text worker available"  # all full, or none running: busy
REFUSED = Counter(
    "voxline_orchestrator_refused_calls_total", "Calls this orchestrator refused (no agent, no STT worker)"
)
CALL_RECORD_TTL_S = 7 * 24 * 3600
# How long shutting down waits for the calls' actors to end their calls.
STOP_TIMEOUT_S = 10.0
# How long a stopping orchestrator waits for another one to take a handed-over call
# before it ends the call itself (there may be no other orchestrator).
HANDOVER_WAIT_S = 3.0


class OrchestratorStatus(msgspec.Struct):
    active_calls: int  # calls this instance owns
    calls: dict[str, CallState]  # their call ids and states
    subscriptions: int  # per-call bus subscriptions they hold, together
    analysing: list[str] = []  # ended calls whose post-call analysis runs here


def with_unheard_audio(assign: SttAssign, call: Call) -> SttAssign:
    """The assignment for the worker that replaces the call's STT worker: it first fetches
    the caller audio since the last final transcript, which its predecessor may have heard
    without transcribing (the gateway keeps the last seconds)."""
    finals = [e.at_us for e in call.recent_stt if isinstance(e, Transcript) and e.is_final]
    since = max(finals, default=call.record.started_at_us)
    return msgspec.structs.replace(assign, audio_since_us=since, finals_heard=call.finals_heard)


class Orchestrator(Failover):
    def __init__(self, bus: Bus, settings: OrchestratorSettings) -> None:
        self.bus = bus
        self.settings = settings
        self.limits = CallLimits(
            history_turns=settings.history_turns,
            brain_timeout_s=settings.brain_timeout_s,
            tts_timeout_s=settings.tts_timeout_s,
            tts_progress_timeout_s=settings.tts_progress_timeout_s,
        )
        self.agents = AgentStore(settings.agents_dir)
        self.calls: dict[str, CallActor] = {}
        self._subs: dict[str, list[Subscription]] = {}
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._records_ready = False
        self._seat = QueueSeat(
            bus, subjects.CALL_START, subjects.QUEUE_ORCHESTRATOR, self._on_call_start, settings.max_calls
        )
        self._assigns: dict[str, SttAssign] = {}
        self._stt_worker: dict[str, str] = {}  # call id -> the STT worker holding its audio
        self._gateway: dict[str, str] = {}  # call id -> the gateway holding its media stream
        self._liveness: list[asyncio.Task[None]] = []
        self._draining = False
        ttl = settings.lease_ttl_s
        self.ownership = Ownership(
            bus,
            settings.instance_id,
            LeaseTimes(ttl_s=ttl, renew_s=ttl / 4, check_s=min(0.2, ttl / 8)),
            on_lost=self._on_lease_lost,
            on_orphan=self._on_orphan,
        )
        self._unresumable: set[str] = set()  # orphans without a saved state, reported once
        policy = RetryPolicy(
            settings.webhook_attempts,
            settings.webhook_backoff_s,
            settings.webhook_backoff_max_s,
            settings.webhook_timeout_s,
        )
        self.webhooks = WebhookDispatcher(bus, policy, settings.webhook_queue_max, settings.webhook_allow_private)
        self.analyst = analysis.Analyst(bus, settings.analysis_timeout_s)

    async def start(self) -> None:
        await self.agents.start(self.bus)  # every agent in memory before the first call
        await self.bus.create_bucket(CALL_RECORDS_BUCKET, ttl_s=CALL_RECORD_TTL_S)
        await self.webhooks.start()
        await self.ownership.start()
        self._records_ready = True
        await self._seat.join()
        stt_workers, gateways = (lambda: set(self._stt_worker.values())), (lambda: set(self._gateway.values()))
        watches = [
            PeerWatch(self.bus, "stt worker", subjects.stt_ping, stt_workers, self._move_calls_of),
            PeerWatch(self.bus, "gateway", subjects.gateway_ping, gateways, self._streams_lost_with_gateway),
        ]
        self._liveness = [asyncio.create_task(w.run(), name=f"watch-{w.what}") for w in watches]

    def ready(self) -> bool:
        return self._records_ready and not self._draining

    def status(self) -> OrchestratorStatus:
        return OrchestratorStatus(
            active_calls=len(self.calls),
            calls={call_id: actor.call.state for call_id, actor in self.calls.items()},
            subscriptions=sum(len(s) for s in self._subs.values()),
            analysing=self.analyst.running,
        )

    async def drain(self) -> None:
        """Take no new call (leave the call-start queue); the calls owned run on to their
        end here: a rolling update never ends a caller's call."""
        self._draining = True
        await self._seat.close()
        while runs := list(self._runs.values()):
            await asyncio.wait(runs)
        await self.analyst.wait()  # the ended calls' analyses (bounded by their timeout)

    async def stop(self) -> None:
        """Hand every call still owned to another orchestrator; end those nobody takes."""
        for watch in self._liveness:
            watch.cancel()
        self._draining = True  # take no handed-over call back
        handed = [call_id for call_id in list(self.calls) if await self._hand_over(call_id)]
        deadline = asyncio.get_running_loop().time() + HANDOVER_WAIT_S
        while handed and asyncio.get_running_loop().time() < deadline:
            handed = [c for c in handed if self.ownership.book.owner(c) in ("", self.settings.instance_id)]
            await asyncio.sleep(0.05)
        for call_id in handed:  # nobody took it: no other orchestrator is running
            log.error("no orchestrator took the call over; ending it", extra={"call_id": call_id})
            await self._end_orphan(call_id)
        for call_id, actor in self.calls.items():
            actor.post(CallStopped(call_id=call_id, reason="orchestrator shutting down", at_us=now_us()))
        runs = list(self._runs.values())
        if runs:
            await asyncio.wait(runs, timeout=STOP_TIMEOUT_S)
        await self.analyst.stop(STOP_TIMEOUT_S)  # leases still renewed; then call.ended, analysed or failed
        await self.ownership.stop()
        await self.agents.stop()
        await self.webhooks.stop()

    async def _on_call_start(self, start: Message, msg: Msg) -> None:
        if not isinstance(start, CallStart):
            log.error("bad call start request: %s", type(start).__name__)
            return
        current_call_id.set(start.call_id)
        taken = start.call_id in self.calls
        if not taken and not await self.ownership.acquire(start.call_id):
            log.warning("call start for a call another orchestrator owns: left to it")
            return
        refusal = "" if taken else await self._take_call(start, msg.headers or {})
        if refusal:
            await self.ownership.release(start.call_id)
            REFUSED.inc()
            log.error("refused call: %s", refusal)
            busy = refusal == NO_STT_WORKER
            await self.bus.respond(msg, CallRefused(call_id=start.call_id, reason=refusal, busy=busy))
            return
        await self.bus.respond(msg, CallAccepted(call_id=start.call_id, orchestrator_id=self.settings.instance_id))
        if not taken:
            self.calls[start.call_id].post(Greet(call_start_us=start.started_at_us))

    async def _take_call(self, start: CallStart, headers: dict[str, str]) -> str:
        """Take the call, in a span that lasts until it ends (a child of the gateway's)."""
        span = tracing.start_span("call", headers=headers, call_id=start.call_id, attributes={"agent": start.agent_id})
        refusal = await self._open_call(start, span)
        if refusal:
            tracing.mark_error(span, "refused")
            span.end()
        return refusal

    async def _open_call(self, start: CallStart, span: Span) -> str:
        try:
            agent, version = self.agents.versioned(start.agent_id)
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
        traceparent = tracing.traceparent(span)
        refusal = await self._assign_stt(assign, traceparent)
        if refusal:
            return refusal

        self._assigns[start.call_id] = assign
        if start.gateway_id:
            self._gateway[start.call_id] = start.gateway_id
        call = new_call(start, agent, self.limits, traceparent, version)
        try:  # the record exists before the gateway hears the call is taken
            await self.bus.kv_put(CALL_RECORDS_BUCKET, call.call_id, call.record)
        except Exception as exc:  # the record is best effort; the call goes on
            log.error("could not save the call record: %s", exc)
        try:  # and the state another orchestrator would resume from
            await self.ownership.save_state(call.call_id, self._snapshot(call))
        except Exception as exc:
            log.error("could not save the call's state: %s", exc)
        await self._run_actor(call, span)
        log.info("call taken: agent %s", agent.id)
        return ""

    async def _run_actor(self, call: Call, call_span: Span | None = None) -> CallActor:
        """Subscribe to the call's subjects and run its actor here."""
        call_id = call.call_id
        reassignments = 0

        async def reassign() -> bool:
            # A provider that keeps failing would otherwise bounce the call forever.
            nonlocal reassignments
            reassignments += 1
            assign = self._assigns.get(call_id)
            return (
                assign is not None
                and reassignments <= MAX_STT_REASSIGNMENTS
                and not await self._assign_stt(with_unheard_audio(assign, call), call.traceparent)
            )

        agent = call.agent  # the agent as the call began: an edit mid-call changes later calls only

        def offer_webhooks(record: CallRecord) -> None:
            self.webhooks.offer(record, agent.webhook_url, agent.webhook_secret_env)

        def on_record(record: CallRecord) -> None:
            analysis.mark(record, agent)  # the ended record says `pending` before it is written or offered
            offer_webhooks(record)

        actor = CallActor(self.bus, call, reassign, self._save_state, call_span, on_record=on_record)
        actor.epoch = self.ownership.epoch(call_id)  # held before the actor runs: acquired or taken over
        handler = self._route(actor)  # events queue up until the actor runs
        self._subs[call_id] = [
            await self.bus.subscribe(subject, handler)
            for subject in (
                subjects.gateway_events(call_id),
                subjects.stt_events(call_id),
                subjects.reply_text(call_id),
                subjects.tts_events(call_id),
            )
        ]
        self._subs[call_id].append(await self.bus.subscribe(subjects.stream_resume(call_id), self._on_resume(actor)))
        self.calls[call_id] = actor
        ACTIVE_CALLS.set(len(self.calls))
        self._seat.holding(len(self.calls))
        self._runs[call_id] = asyncio.create_task(self._run_call(actor), name=f"call-{call_id}")
        offer_webhooks(call.record)  # call.started; after a takeover, what the last owner left undone
        return actor

    def _analyse(self, call: Call) -> bool:
        """The post-call analysis of an ended call, beside its teardown (analysis.py); the
        call's lease is let go once it is written. False: nothing to analyse."""
        record, agent = call.record, call.agent
        if record.analysis is None or record.analysis.status != "pending":
            return False

        def offer(analysed: CallRecord) -> None:
            self.webhooks.offer(analysed, agent.webhook_url, agent.webhook_secret_env)

        self.analyst.start(record, agent, offer, finished=lambda: self.ownership.release(call.call_id))
        return True

    async def _announce_end(self, actor: CallActor) -> None:
        call_id = actor.call.call_id
        reason = actor.call.record.end_reason or "orchestrator stopped"
        try:
            await self.bus.publish(subjects.CALL_ENDED, CallEnded(call_id=call_id, reason=reason))
        except Exception as exc:  # the connection may be going away at shutdown
            log.warning("could not announce the end of the call: %s", exc)
        if not self._analyse(actor.call):  # else the lease goes once the analysis is written
            await self.ownership.release(call_id)
        log.info("call ended: %s", reason, extra={"call_id": call_id})

    async def _assign_stt(self, assign: SttAssign, traceparent: str) -> str | None:
        """Ask the STT queue group for a worker; None when one took the call. The worker's
        utterance spans are children of the call's (`traceparent`)."""
        headers = call_headers(assign.call_id, traceparent=traceparent)
        try:
            reply = await self.bus.request(
                subjects.STT_ASSIGN, assign, timeout=self.settings.stt_assign_timeout_s, headers=headers
            )
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return NO_STT_WORKER
        if not isinstance(reply, SttAssigned):
            return f"speech-to-text worker refused the call ({type(reply).__name__})"
        self._stt_worker[assign.call_id] = reply.worker_id
        log.info("stt worker %s (%s) listens to the call", reply.worker_id, reply.provider)
        return None

    async def _streams_lost_with_gateway(self, gateway_id: str) -> None:
        """The gateway holding these calls' media streams is gone: Twilio comes back with a
        new stream on another gateway (`StreamResume`), or the calls end after a wait."""
        ended = [cid for cid, gid in self._gateway.items() if gid == gateway_id]
        log.error("gateway %s is gone; ending its %d calls", gateway_id, len(ended))
        for call_id in ended:
            self._gateway.pop(call_id, None)
            actor = self.calls.get(call_id)
            if actor is not None:
                # Naming the stream: if a new one is already on its way, this is old news.
                lost = CallStopped(
                    call_id=call_id,
                    reason="media stream lost: gateway gone",
                    at_us=now_us(),
                    lost=True,
                    stream_sid=actor.call.stream_sid,
                )
                actor.post(lost)

    async def _move_calls_of(self, worker_id: str) -> None:
        moved = [cid for cid, wid in self._stt_worker.items() if wid == worker_id]
        log.error("stt worker %s is gone; moving its %d calls", worker_id, len(moved))
        for call_id in moved:
            self._stt_worker.pop(call_id, None)
            assign, actor = self._assigns.get(call_id), self.calls.get(call_id)
            if assign is None or actor is None:
                continue
            # A worker that only looked dead (slow to answer its pings) must not go on
            # listening beside its replacement: two workers would send two transcripts.
            release = SttRelease(call_id=call_id, reason="moved to another stt worker")
            try:
                await self.bus.publish(subjects.stt_release(worker_id), release)
            except Exception as exc:
                log.warning("could not tell the stt worker to let the call go: %s", exc, extra={"call_id": call_id})
            refusal = await self._assign_stt(with_unheard_audio(assign, actor.call), actor.call.traceparent)
            if refusal:
                actor.post(SttLost(reason=refusal))
            else:
                log.info("call reassigned to another stt worker", extra={"call_id": call_id})

    def _on_resume(self, actor: CallActor) -> MessageHandler:
        """A new media stream of the call (its stream broke, Twilio came back through the
        `<Connect action>`): the call goes on through that stream's gateway."""

        async def handler(message: Message, msg: Msg) -> None:
            call_id = actor.call.call_id
            if not isinstance(message, StreamResume) or not msg.reply:
                log.warning("ignored %s on %s", type(message).__name__, msg.subject, extra={"call_id": call_id})
                return
            if actor.call.state is CallState.ENDED or actor.abandoned:
                await self.bus.respond(msg, CallRefused(call_id=call_id, reason="the call is over"))
                return
            self._gateway[call_id] = message.gateway_id
            actor.post(message)
            await self.bus.respond(msg, CallAccepted(call_id=call_id, orchestrator_id=self.settings.instance_id))

        return handler

    @staticmethod
    def _route(actor: CallActor) -> MessageHandler:
        async def handler(message: Message, _msg: Msg) -> None:
            actor.post(message)

        return handler

    async def _run_call(self, actor: CallActor) -> None:
        """The call's life: its actor runs until the call ends, then every resource of the
        call is released here (not in a subscription's callback, which unsubscribing
        would cancel)."""
        call_id = actor.call.call_id
        try:
            await actor.run()
        finally:
            self.calls.pop(call_id, None)
            self._runs.pop(call_id, None)
            self._assigns.pop(call_id, None)
            self._stt_worker.pop(call_id, None)
            self._gateway.pop(call_id, None)
            ACTIVE_CALLS.set(len(self.calls))
            self._seat.holding(len(self.calls))
            if actor.abandoned:  # the call goes on elsewhere: no last word from here
                self.ownership.forget(call_id)
                self.webhooks.forget(call_id)
                if not actor.handing_over:
                    log.info("call let go: it is owned elsewhere", extra={"call_id": call_id})
            else:
                await self._announce_end(actor)
            for sub in self._subs.pop(call_id, []):
                try:
                    await sub.unsubscribe()
                except Exception as exc:
                    log.debug("unsubscribe failed: %s", exc)


async def start(bus: Bus, settings: OrchestratorSettings) -> Orchestrator:
    worker = Orchestrator(bus, settings)
    await worker.start()
    return worker
