"""A customer's webhook endpoint for tests: a real HTTP server on 127.0.0.1, in a thread of
its own (independent of the test's event loop), that checks every signature and records
what it gets."""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from voxline.webhooks.signing import verify

SECRET = "whsec-test-0123456789abcdef"
SECRET_ENV = "VOXLINE_WEBHOOK_SECRET_TEST"
FAILURES_BEFORE_SUCCESS = 2


@dataclass
class Received:
    path: str
    event_id_header: str
    signed: bool  # the Voxline-Signature verified against the raw body
    event: dict[str, Any]


class Receiver:
    """The customer's endpoint. `/ok` answers 200; `/flaky` answers 500 to the first two
    requests of each event, then 200; `/hang` answers nothing until `release` is set;
    `/stall` holds the first request of a caller's line until `release` is set, and answers
    200 to every other."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.per_event: Counter[str] = Counter()
        self.hanging = 0  # requests held open right now
        self.stalled = 0
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                signed = verify(SECRET, body, self.headers.get("Voxline-Signature", ""))
                event = json.loads(body)
                with receiver.lock:
                    receiver.received.append(
                        Received(self.path, self.headers.get("Voxline-Event-Id", ""), signed, event)
                    )
                    receiver.per_event[event["id"]] += 1
                    nth = receiver.per_event[event["id"]]
                    caller_line = event["type"] == "transcript.final" and event["data"]["speaker"] == "caller"
                    stall = self.path == "/stall" and caller_line and receiver.stalled == 0
                    hang = self.path == "/hang" or stall
                    receiver.stalled += stall
                    receiver.hanging += hang
                status = 500 if self.path == "/flaky" and nth <= FAILURES_BEFORE_SUCCESS else 200
                if hang:
                    receiver.release.wait(60)
                    with receiver.lock:
                        receiver.hanging -= 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_call(self, call_id: str, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.event["call_id"] == call_id and r.path == path]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


def agent_toml(name: str, url: str) -> str:
    return (
        f'name = "{name}"\ngreeting = "Hello, webhooks here."\nsystem_prompt = "You are a test agent."\n'
        f'goodbye = "Goodbye."\nwebhook_url = "{url}"\nwebhook_secret_env = "{SECRET_ENV}"\n'
    )
