"""The webhook dispatcher alone, on a real nats-server (its delivery record in JetStream KV)
and a real HTTP receiver on 127.0.0.1: which answers end a delivery, which are retried,
timeouts, a missing secret, and a full queue."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import REGISTRY

from proto.records import CallRecord
from proto.webhooks import WEBHOOK_DELIVERIES_BUCKET, WebhookDeliveries
from voxline.bus import Bus
from voxline.webhooks.dispatcher import RetryPolicy, WebhookDispatcher
from voxline.webhooks.signing import verify

SECRET_ENV = "VOXLINE_WEBHOOK_SECRET_UNIT"
SECRET = "whsec-dispatcher-unit"


class CodesReceiver:
    """`/codes/408,200` answers 408 to an event's first request, then 200 to every later
    one; `/slow` answers 200 after a second (past the tests' timeout)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                event_id = self.headers.get("Voxline-Event-Id", "")
                with receiver.lock:
                    receiver.requests[event_id] += 1
                    nth = receiver.requests[event_id]
                    receiver.bad_signatures += not verify(SECRET, body, self.headers.get("Voxline-Signature", ""))
                if self.path == "/slow":
                    time.sleep(1.0)
                    status = 200
                else:
                    codes = [int(c) for c in self.path.rsplit("/", 1)[1].split(",")]
                    status = codes[min(nth, len(codes)) - 1]
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the client gave up (timeout)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def receiver() -> Iterator[CodesReceiver]:
    r = CodesReceiver()
    yield r
    r.server.shutdown()


@pytest.fixture
async def dispatcher(worker_bus: Bus, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[WebhookDispatcher]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    d = WebhookDispatcher(worker_bus, RetryPolicy(attempts=3, base_s=0.02, max_s=0.05, timeout_s=0.3))
    await d.start()
    yield d
    await d.stop(grace_s=0)


_calls = 0


def started(agent: str = "a") -> CallRecord:
    """A record that implies one event (call.started), for a call of its own."""
    global _calls
    _calls += 1
    return CallRecord(call_id=f"unit{_calls}x{time.monotonic_ns()}", call_sid="CA1", agent_id=agent,
                      status="in-progress", started_at_us=1)  # fmt: skip


async def settled(bus: Bus, call_id: str) -> WebhookDeliveries:
    """The call's delivery record once no delivery in it is pending (polled: the condition
    is what the API would show)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        record = await bus.kv_get(WEBHOOK_DELIVERIES_BUCKET, call_id, WebhookDeliveries)
        if record and record.deliveries and all(d.state != "pending" for d in record.deliveries):
            return record
        await asyncio.sleep(0.02)
    raise AssertionError(f"deliveries of {call_id} still pending")


def outcome_count(outcome: str) -> float:
    return REGISTRY.get_sample_value("voxline_webhook_deliveries_total", {"outcome": outcome}) or 0.0


@pytest.mark.parametrize(
    ("codes", "state", "seen", "outcome"),
    [
        ("404", "failed", [404], "rejected"),  # a 4xx is the receiver's final word
        ("410", "failed", [410], "rejected"),
        ("408,429,200", "delivered", [408, 429, 200], "delivered"),  # timeout and throttling: again
        ("503,502,500", "failed", [503, 502, 500], "gave_up"),  # every attempt used
        ("500,201", "delivered", [500, 201], "delivered"),
    ],
)
async def test_answers_decide_the_retries(
    dispatcher: WebhookDispatcher, worker_bus: Bus, receiver: CodesReceiver, codes: str, state: str,
    seen: list[int], outcome: str,
) -> None:  # fmt: skip
    before = outcome_count(outcome)
    record = started()
    dispatcher.offer(record, f"{receiver.url}/codes/{codes}", SECRET_ENV)
    delivery = (await settled(worker_bus, record.call_id)).deliveries[0]
    assert delivery.state == state
    assert [a.status_code for a in delivery.attempts] == seen
    assert [a.attempt for a in delivery.attempts] == list(range(1, len(seen) + 1))
    assert receiver.requests[delivery.event_id] == len(seen)
    assert receiver.bad_signatures == 0
    assert outcome_count(outcome) == before + 1


async def test_a_timeout_is_recorded_and_retried(
    dispatcher: WebhookDispatcher, worker_bus: Bus, receiver: CodesReceiver
) -> None:
    record = started()
    dispatcher.offer(record, f"{receiver.url}/slow", SECRET_ENV)
    delivery = (await settled(worker_bus, record.call_id)).deliveries[0]
    assert delivery.state == "failed"
    assert [(a.status_code, a.error) for a in delivery.attempts] == [(0, "timeout after 0.3s")] * 3


async def test_a_connection_error_is_retried(dispatcher: WebhookDispatcher, worker_bus: Bus) -> None:
    record = started()
    dispatcher.offer(record, "http://127.0.0.1:9/nobody", SECRET_ENV)  # port 9: nothing listens
    delivery = (await settled(worker_bus, record.call_id)).deliveries[0]
    assert [a.status_code for a in delivery.attempts] == [0, 0, 0]
    assert all(a.error.startswith("connection error") for a in delivery.attempts)


async def test_no_secret_nothing_is_sent_unsigned(
    dispatcher: WebhookDispatcher, worker_bus: Bus, receiver: CodesReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV)
    record = started()
    dispatcher.offer(record, f"{receiver.url}/codes/200", SECRET_ENV)
    delivery = (await settled(worker_bus, record.call_id)).deliveries[0]
    assert delivery.state == "failed" and receiver.requests[delivery.event_id] == 0
    assert [a.error for a in delivery.attempts] == [
        f"the signing secret is not set (environment variable {SECRET_ENV})"
    ]


async def test_a_full_queue_drops_and_counts_without_blocking(worker_bus: Bus, receiver: CodesReceiver) -> None:
    d = WebhookDispatcher(worker_bus, RetryPolicy(attempts=1, timeout_s=0.3), queue_max=2)
    await d.start()
    try:
        before = outcome_count("dropped")
        records = [started() for _ in range(5)]
        for record in records:  # synchronous: nothing is sent before the loop yields
            d.offer(record, f"{receiver.url}/codes/200", "VOXLINE_WEBHOOK_SECRET_UNIT")
        assert d.queued == 2
        assert outcome_count("dropped") == before + 3
    finally:
        await d.stop(grace_s=0)


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "http://10.255.255.1:9/hook"])
async def test_a_url_into_the_private_network_is_refused_unsent(
    dispatcher: WebhookDispatcher, worker_bus: Bus, url: str
) -> None:
    before = outcome_count("refused")
    record = started()
    dispatcher.offer(record, url, SECRET_ENV)
    delivery = (await settled(worker_bus, record.call_id)).deliveries[0]
    assert delivery.state == "failed"
    assert len(delivery.attempts) == 1  # final: a refused destination is not retried
    assert delivery.attempts[0].error.startswith("refused: ") and "not a public address" in delivery.attempts[0].error
    assert outcome_count("refused") == before + 1
