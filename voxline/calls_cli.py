"""`voxline calls`: the calls API from the command line: `list` (GET /v1/calls, its filters
and cursor), `get ID` (one record, turn by turn), `events ID` (the call's server-sent
events as they come, until `call.ended`) and `place` (POST /v1/calls).

The gateway is `--url` (default `VOXLINE_API_URL`, then `VOXLINE_GATEWAY_URL`, then the
`make run` gateway); the key `--api-key` (default `VOXLINE_API_KEY`): `read` scope for the
reads, `calls` to place a call; a loopback `make run` needs none. An API error prints the
API's own message (and the field at fault) and exits 1."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx

from voxline.agents_cli import ApiError

TIMEOUT_S = 10.0
EVENTS_READ_TIMEOUT_S = 60.0  # the server sends a keep-alive comment every 15 s
EVENTS_RECONNECTS = 5  # a stream cut before call.ended is resumed with Last-Event-ID this often
DEFAULT_URL = "http://127.0.0.1:8080"


def error_message(response: httpx.Response) -> str:
    """`{"error": {"message", "field"?}}`, the API's one error shape; the body's start else."""
    try:
        err = response.json()["error"]
        field = f" (field {err['field']})" if err.get("field") else ""
        return f"{err['message']}{field}"
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


class CallsClient:
    def __init__(self, url: str, api_key: str = "") -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=TIMEOUT_S)

    def request(
        self, method: str, path: str, params: dict[str, Any] | None = None, body: dict[str, Any] | None = None
    ) -> Any:
        try:
            response = self.http.request(method, path, params=params, json=body)
        except httpx.HTTPError as exc:
            raise ApiError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        if not response.is_success:
            raise ApiError(f"{method} {path}: {response.status_code} {error_message(response)}")
        return response.json()

    def pages(self, filters: dict[str, Any], cursor: str | None, every: bool) -> Iterator[dict[str, Any]]:
        """The list's pages in order: one, or with `every` each `next_cursor` until null."""
        while True:
            params = {k: v for k, v in {**filters, "cursor": cursor}.items() if v is not None}
            page: dict[str, Any] = self.request("GET", "/v1/calls", params=params)
            yield page
            cursor = page.get("next_cursor")
            if not every or not cursor:
                return

    def events(self, call_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event, data) as the stream delivers them, until `call.ended`. A stream cut before
        it (a gateway restarted, a proxy's timeout) is resumed from the last event with an
        id: the server replays what came after it, so nothing is printed twice or missed
        (live-only events of the gap aside: partials and speech.*)."""
        path = f"/v1/calls/{call_id}/events"
        last_id = ""
        for _ in range(EVENTS_RECONNECTS + 1):
            headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_id} if last_id else {})}
            timeout = httpx.Timeout(TIMEOUT_S, read=EVENTS_READ_TIMEOUT_S)
            try:
                with self.http.stream("GET", path, headers=headers, timeout=timeout) as response:
                    if not response.is_success:
                        response.read()
                        raise ApiError(f"GET {path}: {response.status_code} {error_message(response)}")
                    for event, data, event_id in parse_sse(response.iter_lines()):
                        last_id = event_id or last_id
                        yield event, data
                        if event == "call.ended":
                            return
            except httpx.HTTPError as exc:
                if not last_id:  # never connected: nothing to resume
                    raise ApiError(f"GET {path}: {type(exc).__name__}: {exc}") from None
        raise ApiError(f"GET {path}: the stream ended {EVENTS_RECONNECTS + 1} times before call.ended")


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(event, data, id) per event of the SSE wire format: fields until a blank line,
    comment lines (`: keep-alive`) skipped. Data that is not a JSON object is kept as text."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "event" in fields or "data" in fields:
                raw = fields.get("data", "")
                try:
                    data = json.loads(raw) if raw else {}
                except ValueError:
                    data = {"text": raw}
                yield (
                    fields.get("event", "message"),
                    data if isinstance(data, dict) else {"data": data},
                    fields.get("id", ""),
                )
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[name] = f"{fields[name]}\n{value}" if name == "data" and name in fields else value


def when(us: int | None) -> str:
    """µs since the epoch as a UTC time a person reads; '-' for 0 (not yet)."""
    if not us:
        return "-"
    return datetime.fromtimestamp(us / 1_000_000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration(call: dict[str, Any]) -> str:
    start, end = call.get("started_at_us") or 0, call.get("ended_at_us") or 0
    if not start or not end or end < start:
        return "-"
    seconds = round((end - start) / 1_000_000)
    return f"{seconds // 60}:{seconds % 60:02d}"


TABLE = "{:<36}  {:<19}  {:<8}  {:<11}  {:<16}  {:<16}  {:<16}  {:>6}  {}"


def table_header() -> str:
    return TABLE.format("CALL ID", "STARTED (UTC)", "DIR", "STATUS", "AGENT", "FROM", "TO", "LENGTH", "END REASON")


def table_row(call: dict[str, Any]) -> str:
    return TABLE.format(
        call.get("call_id", ""),
        when(call.get("started_at_us")),
        call.get("direction", ""),
        call.get("status", ""),
        call.get("agent_id", ""),
        call.get("from_number") or "-",
        call.get("to_number") or "-",
        duration(call),
        call.get("end_reason", ""),
    )


def latency_line(latency: dict[str, float]) -> str:
    """The per-stage breakdown in pipeline order, as the record keeps it."""
    return "  ".join(f"{stage} {ms:.0f}" for stage, ms in latency.items()) + " ms"


def show_record(record: dict[str, Any]) -> list[str]:
    out = [
        f"call      {record.get('call_id', '')}",
        f"agent     {record.get('agent_id', '')} (version {record.get('agent_version', 0)})",
        f"direction {record.get('direction', '')}  from {record.get('from_number') or '-'}"
        f"  to {record.get('to_number') or '-'}",
        f"status    {record.get('status', '')}  {record.get('end_reason', '')}".rstrip(),
        f"started   {when(record.get('started_at_us'))}  ended {when(record.get('ended_at_us'))}"
        f"  length {duration(record)}",
    ]
    for label, key in (
        ("answered  ", "answered_by"),
        ("transfer  ", "transfer_status"),
        ("resumes   ", "stream_resumes"),
    ):
        if record.get(key):
            out.append(f"{label}{record[key]}")
    variables = record.get("variables")
    if isinstance(variables, dict) and variables:
        out.append("variables " + ", ".join(f"{k}={v}" for k, v in variables.items()))
    costs = record.get("costs")
    if isinstance(costs, dict) and any(costs.values()):
        out.append("costs     " + "  ".join(f"{k} {v}" for k, v in costs.items()))
    out += analysis_lines(record.get("analysis"))
    for turn in record.get("turns", []):
        flags = [
            f
            for f, on in (
                ("interrupted", turn.get("interrupted")),
                ("preemptive", turn.get("preemptive")),
                (f"paused x{turn.get('paused')}", turn.get("paused")),
                (f"cancelled: {turn.get('cancel_reason')}", turn.get("cancel_reason")),
            )
            if on
        ]
        out.append(f"turn {turn.get('turn_id')} {turn.get('kind', '')}" + (f" ({', '.join(flags)})" if flags else ""))
        if turn.get("caller_text"):
            out.append(f"  caller: {turn['caller_text']}")
        if turn.get("reply_text"):
            out.append(f"  agent:  {turn['reply_text']}")
        if turn.get("interrupted") or (turn.get("heard_text") and turn.get("heard_text") != turn.get("reply_text")):
            out.append(f"  heard:  {turn.get('heard_text') or '(nothing)'}")
        if turn.get("latency"):
            out.append(f"  latency: {latency_line(turn['latency'])}")
    return out


def analysis_lines(analysis: Any) -> list[str]:
    """The post-call analysis: status and who wrote it, the summary, each field."""
    if not isinstance(analysis, dict) or analysis.get("status") in (None, "none"):
        return []
    status, by = analysis.get("status", ""), " ".join(filter(None, (analysis.get("provider"), analysis.get("model"))))
    head = f"analysis  {status}" + (f" ({by}, {analysis.get('duration_ms', 0):.0f} ms)" if by else "")
    out = [head + (f": {analysis['error']}" if analysis.get("error") else "")]
    if analysis.get("summary"):
        out.append(f"  summary: {analysis['summary']}")
    out += [f"  {name}: {json.dumps(value)}" for name, value in (analysis.get("fields") or {}).items()]
    return out


def event_line(event: str, data: dict[str, Any]) -> str:
    """One line per event: what a person watching the call wants to see of it."""
    at = datetime.now(UTC).strftime("%H:%M:%S")  # when it came: not every event carries a time
    prefix = f"{at}  {event:<18}"
    if event.startswith("transcript."):
        speaker = data.get("speaker", "caller")
        return f"{prefix}  {speaker}: {data.get('text', '')}"
    if event == "turn.ended":
        extra = " interrupted" if data.get("interrupted") else ""
        latency = latency_line(data.get("latency_ms") or {}) if data.get("latency_ms") else ""
        return f"{prefix}  turn {data.get('turn_id')} {data.get('kind', '')}{extra}  {latency}".rstrip()
    if event == "call.ended":
        record = data.get("record") or {}
        analysis = record.get("analysis") or {}
        said = f"  analysis {analysis['status']}" if analysis.get("status") not in (None, "none") else ""
        return f"{prefix}  {record.get('end_reason', '')}  length {duration(record)}{said}".rstrip()
    if event == "call.started":
        return f"{prefix}  from {data.get('from_number') or '-'}  to {data.get('to_number') or '-'}"
    return prefix.rstrip()


def run(args: argparse.Namespace) -> int:
    client = CallsClient(args.url, args.api_key or "")
    try:
        if args.calls_command == "list":
            filters = {
                "agent_id": args.agent,
                "status": args.status,
                "direction": args.direction,
                "number": args.number,
                "started_after": args.since,
                "started_before": args.until,
                "limit": args.limit,
            }
            print(table_header())
            cursor = None
            for page in client.pages(filters, args.cursor, args.all):
                for call in page["calls"]:
                    print(table_row(call))
                cursor = page.get("next_cursor")
            if cursor and not args.all:
                print(f"more: --cursor {cursor} (or --all)", file=sys.stderr)
        elif args.calls_command == "get":
            record = client.request("GET", f"/v1/calls/{args.id}")
            print(json.dumps(record, indent=2) if args.json else "\n".join(show_record(record)))
        elif args.calls_command == "events":
            for event, data in client.events(args.id):
                print(json.dumps({"event": event, "data": data}) if args.json else event_line(event, data), flush=True)
        elif args.calls_command == "place":
            body: dict[str, Any] = {"to": args.to, "agent_id": args.agent}
            if args.from_:
                body["from"] = args.from_
            if args.machine_detection:
                body["machine_detection"] = True
            if args.voicemail_message is not None:
                body["voicemail_message"] = args.voicemail_message
            if args.var:
                body["variables"] = dict(pair.partition("=")[::2] for pair in args.var)
            placed = client.request("POST", "/v1/calls", body=body)
            print(f"{placed['call_sid']} {placed.get('status', '')}".rstrip())
    except ApiError as exc:
        print(f"voxline calls: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def add_arguments(calls: argparse.ArgumentParser) -> None:
    default_url = os.environ.get("VOXLINE_API_URL") or os.environ.get("VOXLINE_GATEWAY_URL") or DEFAULT_URL
    calls.add_argument("--url", "--api-url", dest="url", default=default_url, help="default VOXLINE_API_URL")
    calls.add_argument("--api-key", default=os.environ.get("VOXLINE_API_KEY", ""), help="default VOXLINE_API_KEY")
    sub = calls.add_subparsers(dest="calls_command", required=True)

    listing = sub.add_parser("list", help="calls, newest first, as a table (GET /v1/calls)")
    listing.add_argument("--agent", help="only this agent's calls")
    listing.add_argument("--status", choices=("in-progress", "ended"))
    listing.add_argument("--direction", choices=("inbound", "outbound"))
    listing.add_argument("--number", help="calls from or to this number (E.164)")
    listing.add_argument("--since", help="started at or after: ISO-8601 (2026-12-04T05:00:00Z) or epoch seconds")
    listing.add_argument("--until", help="started before: ISO-8601 or epoch seconds")
    listing.add_argument("--limit", type=int, help="calls per page (1-200; the API's default 50)")
    listing.add_argument("--cursor", help="go on from a previous listing's cursor (same filters)")
    listing.add_argument("--all", action="store_true", help="follow the cursor through every page")

    get = sub.add_parser("get", help="one call: numbers, status, times, each turn with its latency")
    get.add_argument("id")
    get.add_argument("--json", action="store_true", help="the record as the API returns it")

    events = sub.add_parser("events", help="a call's live events as they come, until call.ended")
    events.add_argument("id")
    events.add_argument("--json", action="store_true", help="one JSON object per event")

    place = sub.add_parser("place", help="dial a number for an agent (POST /v1/calls)")
    place.add_argument("--to", required=True, help="number to dial, E.164")
    place.add_argument("--agent", default="demo", help="agent that talks when the callee answers")
    place.add_argument("--from", dest="from_", default="", help="caller id; TWILIO_FROM_NUMBER when empty")
    place.add_argument("--machine-detection", action="store_true", help="answering-machine detection")
    place.add_argument("--voicemail-message", help="left on an answering machine (needs --machine-detection)")
    place.add_argument(
        "--var",
        action="append",
        metavar="NAME=VALUE",
        help="a variable for the agent's {{NAME}} placeholders (repeatable)",
    )
    calls.set_defaults(func=run)
