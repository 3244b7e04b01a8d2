"""Delivers an agent's webhook events to the customer, from the orchestrator that owns the
call.

Why there: the events are born in the owner (it decides the end of a turn and writes the
call record, `events.py` derives the events from that record), so it needs no new bus
subject, no other service reading every call's transcripts, and no permission beyond one KV
bucket. Why it survives the owner failing over: the record is snapshotted with the call and
each event's id is a function of the call and turn, so the new owner derives the same
events; before delivering a call's first event it reads the call's delivery record
(`proto/webhooks.py`), skips what was delivered or failed for good and resends what its
predecessor had begun (stored with its exact body). That is at-least-once for every event
of a call while the call is owned; a receiver dedupes on `Voxline-Event-Id`. Not covered:
an orchestrator dying after the call ended, while a retry of its last events waits (no
owner is left to resume them; their delivery record stays `pending`).

Why a receiver never holds up a call: `offer` is synchronous and only appends to a bounded
in-memory queue (full: the event is dropped, counted and logged); each call's events go out
in order from a task of their own, with a per-request timeout, so a receiver that hangs
delays only later events of the same call, never a turn or the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import msgspec

from proto.records import CallRecord
from proto.webhooks import WEBHOOK_DELIVERIES_BUCKET, WebhookAttempt, WebhookDeliveries, WebhookDelivery
from voxline.bus import Bus
from voxline.metrics import WEBHOOK_ATTEMPTS, WEBHOOK_DELIVERIES
from voxline.telemetry import now_us
from voxline.webhooks.destination import Refused, check_destination
from voxline.webhooks.events import WebhookEvent, concluded, implied_events
from voxline.webhooks.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, signature

log = logging.getLogger("voxline.webhooks")

DELIVERIES_TTL_S = 7 * 24 * 3600  # as long as the call records
USER_AGENT = "Voxline-Webhooks/1"
REFUSED = "refused:"  # an attempt not made: the destination is not allowed (destination.py)
STOP_GRACE_S = 5.0  # a stopping orchestrator waits this long for deliveries under way


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_s: float = 4.0
    max_s: float = 30.0
    timeout_s: float = 5.0

    def delay_s(self, retry: int, rng: random.Random | None = None) -> float:
        """Wait before retry number `retry` (1 = the second attempt): exponential, capped,
        with "equal jitter" (half fixed, half random) so receivers that failed together
        are not hit together again, while the wait never shrinks to nothing."""
        full = min(self.max_s, self.base_s * 2.0 ** (retry - 1))
        jitter = (rng or random).uniform(0, full / 2)
        return full / 2 + jitter


def retryable(status_code: int) -> bool:
    """Timeouts, throttling and server errors are retried; any other 4xx is the
    receiver's final word (a retry would get the same answer)."""
    return status_code in (408, 429) or status_code >= 500


def where(url: str) -> str:
    """The URL as logs show it: scheme, host and path, no query (it may hold a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


@dataclass(frozen=True)
class Target:
    url: str
    secret_env: str


@dataclass
class _CallHooks:
    call_id: str
    agent_id: str
    target: Target
    offered: set[str] = field(default_factory=set)  # ids offered by this process
    queue: deque[WebhookEvent] = field(default_factory=deque)
    record: WebhookDeliveries | None = None  # loaded from the KV before the first delivery
    task: asyncio.Task[None] | None = None
    ended: bool = False


class WebhookDispatcher:
    def __init__(self, bus: Bus, policy: RetryPolicy, queue_max: int = 1000, allow_private: bool = False) -> None:
        self.allow_private = allow_private  # destination.py: private ranges are refused unless set
        self.bus = bus
        self.policy = policy
        self.queue_max = queue_max
        self.queued = 0
        self._calls: dict[str, _CallHooks] = {}
        self._client = httpx.AsyncClient(follow_redirects=False, headers={"User-Agent": USER_AGENT})
        self._rng = random.Random()

    async def start(self) -> None:
        await self.bus.create_bucket(WEBHOOK_DELIVERIES_BUCKET, ttl_s=DELIVERIES_TTL_S)

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Let deliveries under way finish for a moment (the last calls' `call.ended`), then
        cancel what is left: its delivery record stays `pending`."""
        tasks = [h.task for h in self._calls.values() if h.task is not None and not h.task.done()]
        if tasks and grace_s > 0:
            await asyncio.wait(tasks, timeout=grace_s)
        for task in tasks:
            task.cancel()
        await self._client.aclose()

    def offer(self, record: CallRecord, url: str, secret_env: str) -> None:
        """The call's record as it is now: queue the events it implies that were not
        offered yet. Never blocks and never raises (a call must not suffer for it)."""
        if not url:
            return
        try:
            self._offer(record, Target(url, secret_env))
        except Exception:
            log.exception("webhook events of the call could not be queued", extra={"call_id": record.call_id})

    def _offer(self, record: CallRecord, target: Target) -> None:
        hooks = self._calls.get(record.call_id)
        if hooks is None:
            hooks = self._calls[record.call_id] = _CallHooks(record.call_id, record.agent_id, target)
        for event in implied_events(record, hooks.offered, now_us()):
            hooks.offered.add(event.id)
            if self.queued >= self.queue_max:
                WEBHOOK_DELIVERIES.labels(outcome="dropped").inc()
                log.error(
                    "webhook queue full (%d events): %s %s dropped",
                    self.queued,
                    event.type,
                    event.id,
                    extra={"call_id": record.call_id},
                )
                continue
            hooks.queue.append(event)
            self.queued += 1
        hooks.ended = hooks.ended or concluded(record)
        if hooks.queue and (hooks.task is None or hooks.task.done()):
            hooks.task = asyncio.create_task(self._run(hooks), name=f"webhooks-{record.call_id}")

    def forget(self, call_id: str) -> None:
        """The call is owned elsewhere now: its events are the new owner's to send."""
        hooks = self._calls.pop(call_id, None)
        if hooks is not None:
            self.queued -= len(hooks.queue)
            if hooks.task is not None:
                hooks.task.cancel()

    async def _run(self, hooks: _CallHooks) -> None:
        try:
            if hooks.record is None:
                await self._load(hooks)
            while hooks.queue:
                event = hooks.queue.popleft()
                self.queued -= 1
                await self._deliver(hooks, event)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook delivery failed", extra={"call_id": hooks.call_id})
        finally:
            if hooks.ended and not hooks.queue and self._calls.get(hooks.call_id) is hooks:
                del self._calls[hooks.call_id]

    async def _load(self, hooks: _CallHooks) -> None:
        """What an earlier owner of the call did: finished events are skipped, begun
        ones resent first (with the body they had)."""
        try:
            stored = await self.bus.kv_get(WEBHOOK_DELIVERIES_BUCKET, hooks.call_id, WebhookDeliveries)
        except Exception as exc:
            log.error("could not read the webhook deliveries of the call: %s", exc, extra={"call_id": hooks.call_id})
            stored = None
        hooks.record = stored or WebhookDeliveries(call_id=hooks.call_id, agent_id=hooks.agent_id)
        done = {d.event_id for d in hooks.record.deliveries if d.state != "pending"}
        begun = [d for d in hooks.record.deliveries if d.state == "pending"]
        kept = [e for e in hooks.queue if e.id not in done and e.id not in {d.event_id for d in begun}]
        self.queued -= len(hooks.queue) - len(kept)
        resumed = [
            WebhookEvent(
                id=d.event_id, type=d.type, call_id=hooks.call_id, agent_id=hooks.agent_id, body=d.body.encode()
            )
            for d in begun
        ]
        hooks.queue = deque([*resumed, *kept])
        self.queued += len(resumed)
        hooks.offered |= done | {d.event_id for d in begun}
        if resumed:
            log.info("resending %d webhook events an earlier owner had begun", len(resumed))

    def _delivery(self, hooks: _CallHooks, event: WebhookEvent) -> WebhookDelivery:
        assert hooks.record is not None
        for delivery in hooks.record.deliveries:
            if delivery.event_id == event.id:
                return delivery
        delivery = WebhookDelivery(
            event_id=event.id, type=event.type, url=where(hooks.target.url), body=event.body.decode()
        )
        hooks.record.deliveries.append(delivery)
        return delivery

    async def _save(self, hooks: _CallHooks) -> None:
        try:
            assert hooks.record is not None
            await self.bus.kv_put(WEBHOOK_DELIVERIES_BUCKET, hooks.call_id, hooks.record)
        except Exception as exc:  # the record is best effort; delivery goes on
            log.error("could not save the webhook deliveries: %s", exc, extra={"call_id": hooks.call_id})

    async def _deliver(self, hooks: _CallHooks, event: WebhookEvent) -> None:
        delivery = self._delivery(hooks, event)
        secret = os.environ.get(hooks.target.secret_env, "")
        if not secret:
            delivery.state = "failed"
            error = f"the signing secret is not set (environment variable {hooks.target.secret_env})"
            delivery.attempts.append(WebhookAttempt(attempt=len(delivery.attempts) + 1, at_us=now_us(), error=error))
            WEBHOOK_DELIVERIES.labels(outcome="no_secret").inc()
            log.error("webhook %s not sent: %s", event.type, error, extra={"call_id": hooks.call_id})
            await self._save(hooks)
            return
        await self._save(hooks)  # pending: a new owner resends it if this one dies now
        first = len(delivery.attempts) + 1
        last = first + self.policy.attempts - 1
        outcome, attempt = "gave_up", None
        for number in range(first, last + 1):
            if number > first:
                await asyncio.sleep(self.policy.delay_s(number - first, self._rng))
            attempt = await self._attempt(hooks, event, secret, number)
            delivery.attempts.append(attempt)
            code = attempt.status_code
            WEBHOOK_ATTEMPTS.labels(result=f"{code // 100}xx" if code else "error").inc()
            if 200 <= code < 300:
                delivery.state, outcome = "delivered", "delivered"
            elif code and not retryable(code):
                delivery.state, outcome = "failed", "rejected"
            elif attempt.error.startswith(REFUSED):
                delivery.state, outcome = "failed", "refused"
            elif number == last:
                delivery.state = "failed"
            await self._save(hooks)
            if delivery.state != "pending":
                break
        WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()
        if outcome != "delivered" and attempt is not None:
            log.warning(
                "webhook %s to %s %s after %d attempts (last: %s)",
                event.type,
                where(hooks.target.url),
                outcome,
                len(delivery.attempts),
                attempt.status_code or attempt.error,
                extra={"call_id": hooks.call_id},
            )

    async def _attempt(self, hooks: _CallHooks, event: WebhookEvent, secret: str, number: int) -> WebhookAttempt:
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(secret, event.body),
            EVENT_ID_HEADER: event.id,
        }
        at_us, started = now_us(), time.monotonic()
        try:
            await check_destination(hooks.target.url, self.allow_private)
        except Refused as exc:
            return WebhookAttempt(attempt=number, at_us=at_us, status_code=0, error=f"{REFUSED} {exc}", duration_ms=0.0)
        try:
            response = await self._client.post(
                hooks.target.url, content=event.body, headers=headers, timeout=self.policy.timeout_s
            )
            status, error = response.status_code, "" if response.is_success else f"HTTP {response.status_code}"
        except httpx.TimeoutException:
            status, error = 0, f"timeout after {self.policy.timeout_s:g}s"
        except httpx.HTTPError as exc:
            status, error = 0, f"connection error: {type(exc).__name__}"
        duration = round((time.monotonic() - started) * 1000, 1)
        return WebhookAttempt(attempt=number, at_us=at_us, status_code=status, error=error, duration_ms=duration)


def deliveries_json(record: WebhookDeliveries) -> bytes:
    """The API's view: every attempt, without the bodies (the call record has the data)."""
    view = msgspec.structs.replace(record, deliveries=[msgspec.structs.replace(d, body="") for d in record.deliveries])
    out = msgspec.to_builtins(view)
    for delivery in out["deliveries"]:
        delivery.pop("body", None)
    return msgspec.json.encode(out)
