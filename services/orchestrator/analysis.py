"""The post-call analysis, asked for by the orchestrator that owned the call, after its end.

Why here and in this order: the call's end must not wait for a model. The actor writes the
ended record with the analysis `pending` (`mark`, on the record's way to the KV and the
webhooks), the call is torn down as always (CALL_ENDED, the lease, the subscriptions), and
only then a task beside the torn-down call asks a brain worker (`BRAIN_ANALYSE`, request/reply
on the brain queue group, bounded by `VOXLINE_ANALYSIS_TIMEOUT_S`) and writes the answer
into the record by compare-and-set, so what the gateway added meanwhile (a transfer's
status) stays. `call.ended` waits for it (voxline/webhooks/events.py `concluded`) and is then
offered with the analysis; a brain that fails, answers nonsense or never answers makes the
analysis `failed` with the reason, and `call.ended` goes out all the same.

The owner keeps the call's lease (and its saved state, the ended call with the analysis
pending) until the analysis is written: if it dies meanwhile, the orchestrator that takes
the lease over finds an ended call still to analyse and does it (`failover.py`), and the
webhooks it then sends skip what the dead owner had delivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
import nats.errors
from prometheus_client import Counter

from proto import subjects
from proto.headers import call_headers
from proto.messages import AnalysisRequest, AnalysisResult, TranscriptLine
from proto.records import CALL_RECORDS_BUCKET, CallAnalysis, CallRecord
from voxline.agents import Agent
from voxline.bus import Bus, RevisionMismatch
from voxline.telemetry import now_us

log = logging.getLogger("voxline.orchestrator.analysis")

ANALYSES = Counter(
    "voxline_call_analyses_total", "Post-call analyses this orchestrator wrote, by outcome (done, failed).", ["status"]
)
for _status in ("done", "failed"):  # both series from the start: a failure rate is 0, not "no data"
    ANALYSES.labels(status=_status)
SAVE_TRIES = 5  # compare-and-set rounds against the gateway's late writes
LAST_WRITE_S = 2.0  # a stopping orchestrator's last write of a cut-short analysis


def mark(record: CallRecord, agent: Agent) -> None:
    """The ended record's analysis status, set before the record is written or offered to the
    webhooks: `pending` when the agent asks for an analysis, else `none`."""
    if record.status == "ended" and record.analysis is None:
        record.analysis = CallAnalysis(status="pending" if agent.analysis is not None else "none")


def transcript(record: CallRecord) -> list[TranscriptLine]:
    """The call's lines as the caller heard them (an interrupted reply: what was heard), in
    order; the same lines the `transcript.final` webhooks carry."""
    lines: list[TranscriptLine] = []
    for turn in record.turns:
        agent_text = turn.heard_text if turn.interrupted else (turn.reply_text or turn.heard_text)
        if turn.caller_text:
            lines.append(TranscriptLine(speaker="caller", text=turn.caller_text, turn_id=turn.turn_id))
        if agent_text:
            lines.append(TranscriptLine(speaker="agent", text=agent_text, turn_id=turn.turn_id))
    return lines


def request_for(record: CallRecord, agent: Agent, timeout_s: float) -> AnalysisRequest:
    options = agent.analysis
    assert options is not None
    return AnalysisRequest(
        call_id=record.call_id,
        agent_id=record.agent_id,
        agent_version=record.agent_version,
        lines=transcript(record),
        summary=options.summary,
        fields=options.specs(),
        instructions=options.instructions,
        end_reason=record.end_reason,
        timeout_ms=int(timeout_s * 1000),
        requested_at_us=now_us(),
    )


def failed(error: str, started: float) -> CallAnalysis:
    return CallAnalysis(status="failed", error=error, duration_ms=round((time.monotonic() - started) * 1000, 1))


def from_result(result: AnalysisResult, request: AnalysisRequest, started: float) -> CallAnalysis:
    """The brain's answer as the record keeps it; fields it did not name are null, fields
    the agent never asked for are dropped (the brain checks too: this is the record's word)."""
    duration = round((time.monotonic() - started) * 1000, 1)
    if result.status != "done":
        error = result.error or "the brain gave no reason"
        return CallAnalysis(
            status="failed", error=error, provider=result.provider, model=result.model, duration_ms=duration
        )
    return CallAnalysis(
        status="done",
        summary=result.summary if request.summary else "",
        fields={name: result.fields.get(name) for name in request.fields},
        provider=result.provider,
        model=result.model,
        duration_ms=duration,
        usage=result.usage,
    )


class Analyst:
    """Runs the analyses of the calls this orchestrator ended, each in a task of its own."""

    def __init__(self, bus: Bus, timeout_s: float) -> None:
        self.bus = bus
        self.timeout_s = timeout_s
        self._tasks: dict[str, asyncio.Task[None]] = {}  # call id -> its analysis under way

    @property
    def running(self) -> list[str]:
        return sorted(self._tasks)

    def start(
        self,
        record: CallRecord,
        agent: Agent,
        offer: Callable[[CallRecord], None],
        finished: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Analyse the ended call (its record is written, its analysis pending); `offer` gets
        the record with the analysis (the webhooks), then `finished` runs (the call's lease
        is let go: until then, an orchestrator dying here leaves the analysis to the one
        taking its lease over). Never blocks, never raises."""
        call_id = record.call_id
        if call_id in self._tasks:
            return
        task = asyncio.create_task(self._run(record, agent, offer, finished), name=f"analysis-{call_id}")
        self._tasks[call_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(call_id, None))

    async def wait(self) -> None:
        """Until every analysis under way is written (each is bounded by the timeout)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()))

    async def stop(self, grace_s: float) -> None:
        """Let the analyses under way finish for `grace_s`; the rest are written `failed`."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)

    async def _run(
        self,
        record: CallRecord,
        agent: Agent,
        offer: Callable[[CallRecord], None],
        finished: Callable[[], Awaitable[None]] | None,
    ) -> None:
        started = time.monotonic()
        try:
            if (written := await self._written(record.call_id)) is not None:
                offer(written)  # a dead owner wrote it but died before letting the lease go
                return
            try:
                analysis = await self.ask(record, agent, started)
            except asyncio.CancelledError:
                analysis = failed("the orchestrator stopped before the brain answered", started)
                try:
                    await asyncio.wait_for(self._finish(record, analysis, offer), LAST_WRITE_S)
                except Exception as exc:
                    log.error("could not write the cut-short analysis: %s", exc, extra={"call_id": record.call_id})
                raise
            except Exception as exc:  # a bug here must still end in call.ended
                log.exception("post-call analysis failed", extra={"call_id": record.call_id})
                analysis = failed(f"internal error: {type(exc).__name__}", started)
            await self._finish(record, analysis, offer)
        finally:
            if finished is not None:
                try:
                    await asyncio.wait_for(finished(), LAST_WRITE_S)
                except Exception as exc:
                    log.warning("after the analysis: %s", exc, extra={"call_id": record.call_id})

    async def _written(self, call_id: str) -> CallRecord | None:
        """The stored record, when its analysis is already written (not pending)."""
        try:
            stored = await self.bus.kv_get(CALL_RECORDS_BUCKET, call_id, CallRecord)
        except Exception as exc:  # then ask: a second analysis beats none
            log.warning("could not read the call record: %s", exc, extra={"call_id": call_id})
            return None
        done = stored is not None and stored.analysis is not None and stored.analysis.status != "pending"
        return stored if done else None

    async def ask(self, record: CallRecord, agent: Agent, started: float) -> CallAnalysis:
        request = request_for(record, agent, self.timeout_s)
        headers = call_headers(record.call_id)
        try:
            reply = await self.bus.request(subjects.BRAIN_ANALYSE, request, timeout=self.timeout_s, headers=headers)
        except nats.errors.NoRespondersError:
            return failed("no brain worker is running", started)
        except nats.errors.TimeoutError:
            return failed(f"no answer from a brain worker within {self.timeout_s:g}s", started)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return failed(f"the brain's answer is outside the contract: {exc}", started)
        if not isinstance(reply, AnalysisResult):
            return failed(f"the brain answered {type(reply).__name__}", started)
        return from_result(reply, request, started)

    async def _finish(self, record: CallRecord, analysis: CallAnalysis, offer: Callable[[CallRecord], None]) -> None:
        extra = {"call_id": record.call_id}
        ANALYSES.labels(status=analysis.status).inc()
        if analysis.status == "failed":
            log.warning("post-call analysis failed: %s", analysis.error, extra=extra)
        else:
            log.info("post-call analysis written in %.0f ms", analysis.duration_ms, extra=extra)
        saved = await self.save(record, analysis)
        offer(saved)

    async def save(self, record: CallRecord, analysis: CallAnalysis) -> CallRecord:
        """The stored record with `analysis`, written by compare-and-set on its revision; the
        record as this orchestrator has it when the store cannot be read or written."""
        record.analysis = analysis
        for _ in range(SAVE_TRIES):
            try:
                entry = await self.bus.kv_entry(CALL_RECORDS_BUCKET, record.call_id, CallRecord)
                if entry is None:
                    await self.bus.kv_put(CALL_RECORDS_BUCKET, record.call_id, record)
                    return record
                stored, revision = entry
                stored.analysis = analysis
                await self.bus.kv_update(CALL_RECORDS_BUCKET, record.call_id, stored, revision)
                return stored
            except RevisionMismatch:
                continue  # the gateway wrote meanwhile: again, on its version
            except Exception as exc:
                log.error("could not save the call's analysis: %s", exc, extra={"call_id": record.call_id})
                return record
        log.error("the call record kept changing; its analysis was not saved", extra={"call_id": record.call_id})
        return record
