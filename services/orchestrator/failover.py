"""How an orchestrator gives a call up and takes one over (`ownership.py` holds the leases).

Kept beside the worker as a mixin: it works on the worker's own tables of calls, but reads
as one story. Giving up: a stopping orchestrator stops the call's actor, saves the call as
it is and frees the lease (`_hand_over`); an owner whose lease was taken while it was paused
or cut off lets the call go without a word (`_on_lease_lost`). Taking over: an orphaned
lease (its owner died, or handed it over) is taken by compare-and-set, and the call resumes
from its snapshot, with the STT events since the snapshot asked for again (`_on_orphan`); an
ended call whose post-call analysis its owner never wrote is analysed (analysis.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import msgspec
from prometheus_client import Counter

from proto import subjects
from proto.messages import CallStopped, SttAssign, SttReplay
from services.orchestrator.actor import CallActor
from services.orchestrator.call import Call, CallSnapshot
from services.orchestrator.events import Resumed, SttLost
from services.orchestrator.ownership import Ownership
from services.orchestrator.states import CallState
from voxline.bus import Bus
from voxline.telemetry import current_call_id, now_us

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger("voxline.orchestrator")

TAKEOVERS = Counter("voxline_orchestrator_takeovers_total", "Calls taken over from a dead or stopping orchestrator")


class Failover:
    """The worker's failover half; `Orchestrator` provides the tables and `_run_actor`."""

    bus: Bus
    ownership: Ownership
    calls: dict[str, CallActor]
    _runs: dict[str, asyncio.Task[None]]
    _assigns: dict[str, SttAssign]
    _stt_worker: dict[str, str]
    _gateway: dict[str, str]
    _draining: bool
    _unresumable: set[str]

    async def _run_actor(self, call: Call, call_span: Span | None = None) -> CallActor:
        raise NotImplementedError

    async def _assign_stt(self, assign: SttAssign, traceparent: str) -> str | None:
        raise NotImplementedError

    def _analyse(self, call: Call) -> bool:
        raise NotImplementedError

    async def _hand_over(self, call_id: str) -> bool:
        """Stop acting on the call, save its state as it is now, and free its lease."""
        actor, run = self.calls.get(call_id), self._runs.get(call_id)
        revision = self.ownership.revision(call_id)
        if actor is None or run is None or actor.ended or revision is None:
            return False
        snapshot = self._snapshot(actor.call)  # taken before the actor's end clears its STT entry
        actor.handing_over = True
        actor.abandon()
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        try:
            await self.ownership.save_state(call_id, snapshot)
            handed = await self.ownership.hand_over(call_id, revision)
        except Exception as exc:
            log.error("could not hand the call over: %s", exc, extra={"call_id": call_id})
            return False
        if handed:
            log.info("call handed over", extra={"call_id": call_id})
        else:  # renewed meanwhile: it will be taken over when the lease runs out instead
            log.warning("the hand-over lost a race with a renewal", extra={"call_id": call_id})
        return handed

    async def _end_orphan(self, call_id: str) -> None:
        """Take back a handed-over call nobody took, and end it here."""
        revision = self.ownership.book.revision(call_id)
        if revision is None or not await self.ownership.take_over(call_id, revision):
            return
        snapshot = await self._load_snapshot(call_id)
        if snapshot is not None:
            actor = await self._run_resumed(snapshot)
            actor.post(CallStopped(call_id=call_id, reason="orchestrator shutting down", at_us=now_us()))

    def _snapshot(self, call: Call) -> bytes:
        snapshot = CallSnapshot(
            call=call,
            assign=self._assigns.get(call.call_id),
            stt_worker=self._stt_worker.get(call.call_id, ""),
            gateway=self._gateway.get(call.call_id, ""),
        )
        return msgspec.json.encode(snapshot)

    async def _save_state(self, call: Call) -> None:
        if self.ownership.holds(call.call_id):
            await self.ownership.save_state(call.call_id, self._snapshot(call))

    async def _on_lease_lost(self, call_id: str) -> None:
        """Someone else owns the call now (we were paused or cut off): let it go, silently."""
        actor, run = self.calls.get(call_id), self._runs.get(call_id)
        if actor is not None:
            actor.abandon()
        if run is not None:
            run.cancel()

    async def _load_snapshot(self, call_id: str) -> CallSnapshot | None:
        data = await self.ownership.load_state(call_id)
        if data is None:
            return None
        try:
            return msgspec.json.decode(data, type=CallSnapshot)
        except msgspec.ValidationError as exc:
            log.error("the saved state of the call is unreadable: %s", exc, extra={"call_id": call_id})
            return None

    async def _on_orphan(self, call_id: str, revision: int) -> None:
        """A lease stood still (its owner died) or was handed over: take the call over."""
        if self._draining or call_id in self.calls or call_id in self._unresumable:
            return
        snapshot = await self._load_snapshot(call_id)
        if snapshot is None:
            self._unresumable.add(call_id)
            log.error("an orphaned call has no saved state; it cannot be resumed", extra={"call_id": call_id})
            return
        previous = self.ownership.book.owner(call_id) or ""
        if not await self.ownership.take_over(call_id, revision):
            return  # another orchestrator was first
        current_call_id.set(call_id)
        if snapshot.call.state is CallState.ENDED:
            # Its owner died while cleaning up, or before its post-call analysis was written.
            if self._analyse(snapshot.call):
                log.warning("took an ended call over from %s to analyse it", previous or "a hand-over")
            else:
                await self.ownership.release(call_id)
            return
        log.warning("took the call over from %s", previous or "a hand-over", extra={"call_id": call_id})
        TAKEOVERS.inc()
        await self._run_resumed(snapshot, previous)

    async def _run_resumed(self, snapshot: CallSnapshot, previous_owner: str = "") -> CallActor:
        call_id = snapshot.call.call_id
        if snapshot.assign is not None:
            self._assigns[call_id] = snapshot.assign
        if snapshot.gateway:
            self._gateway[call_id] = snapshot.gateway
        if snapshot.stt_worker:
            self._stt_worker[call_id] = snapshot.stt_worker  # the liveness watch covers it from now
        actor = await self._run_actor(snapshot.call)
        actor.post(Resumed(previous_owner=previous_owner))
        if snapshot.stt_worker:  # what the caller said since the snapshot went to the dead owner
            since = max((e.at_us for e in snapshot.call.recent_stt), default=snapshot.call.record.started_at_us)
            replay = SttReplay(call_id=call_id, since_us=since)
            try:
                await self.bus.publish(subjects.stt_replay(snapshot.stt_worker), replay)
            except Exception as exc:
                log.warning("could not ask for the STT events since the snapshot: %s", exc, extra={"call_id": call_id})
        if not snapshot.stt_worker and snapshot.assign is not None:
            refusal = await self._assign_stt(snapshot.assign, snapshot.call.traceparent)
            if refusal:
                actor.post(SttLost(reason=refusal))
        return actor
