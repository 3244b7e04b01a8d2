"""Twilio's webhooks (`POST /twilio/voice` and the callbacks after it) on a running gateway,
with random form fields, query, forwarded headers and bodies, most of them correctly signed
so the handlers behind the signature check are reached: never a 5xx, an answer within 5 s,
and a request without a valid signature is always a 403."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from tests.fuzz.harness import Count, Finding, assert_clean, batch_settings, pytest_timeout_s, run_target
from tests.fuzz.strategies import SHORT_TEXT, TEXT
from tests.integration.conftest import AUTH_TOKEN
from voxline.devstack import DevStack

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(pytest_timeout_s())]

PATHS = ["/twilio/voice", "/twilio/stream-ended", "/twilio/stream-status", "/twilio/dial-ended", "/twilio/status"]
# The fields Twilio sends to these URLs (Voice webhook, <Connect action>, <Stream statusCallback>,
# <Dial action>, call status callback), which the handlers read.
FIELDS = [
    "CallSid", "AccountSid", "From", "To", "Direction", "CallStatus", "StreamSid", "StreamEvent",
    "StreamError", "DialCallStatus", "DialCallSid", "agent", "ApiVersion", "Digits",
]  # fmt: skip
VALUES = st.one_of(
    TEXT,
    st.sampled_from(["", "+15005550006", "+1", "inbound", "outbound-api", "stream-error", "stream-started"]),
    st.sampled_from(["completed", "busy", "no-answer", "failed", "canceled", "in-progress", "answered"]),
    st.text("0123456789abcdef", min_size=32, max_size=32).map(lambda h: "CA" + h),
)
FORMS = st.dictionaries(st.sampled_from(FIELDS) | SHORT_TEXT, VALUES, max_size=8)
AGENTS = st.one_of(st.none(), st.sampled_from(["demo", "quick-idle", "patient", "nobody", ""]), TEXT)
# Header values as HTTP allows them (printable ASCII, no space at either end).
ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip)
FORWARDED = st.one_of(st.none(), st.tuples(st.sampled_from(["http", "https", "wss"]) | ASCII, ASCII))
SIGNING = st.sampled_from(["valid"] * 8 + ["none", "wrong"])


class Request(dict[str, Any]):
    """What one input sends, printed in a failure report."""


@st.composite
def requests(draw: st.DrawFn) -> Request:
    path = draw(st.sampled_from(PATHS))
    agent = draw(AGENTS)
    query = "" if agent is None else urlencode({"agent": agent}, quote_via=quote)
    raw = draw(st.booleans()) if draw(st.integers(0, 9)) == 0 else False
    form = draw(FORMS)
    body = draw(st.binary(max_size=600)) if raw else None
    content_type = draw(
        st.sampled_from(["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain"]) | ASCII
    )
    return Request(
        path=path,
        query=query,
        form=form,
        body=body,
        content_type=content_type,
        forwarded=draw(FORWARDED),
        signing=draw(SIGNING),
    )


def send(client: httpx.Client, base: str, r: Request) -> httpx.Response:
    url = base + r["path"] + (f"?{r['query']}" if r["query"] else "")
    headers: dict[str, str] = {}
    if r["forwarded"] is not None:
        headers["X-Forwarded-Proto"], headers["X-Forwarded-Host"] = r["forwarded"]
    if r["body"] is not None:
        headers["Content-Type"] = r["content_type"]
        request = client.build_request("POST", url, content=r["body"], headers=headers)
    else:
        request = client.build_request("POST", url, data=r["form"], headers=headers)
    if r["signing"] != "none":
        # The URL the gateway rebuilds from the (forwarded) scheme and host it was given.
        scheme = r["forwarded"][0].split(",")[0].strip() if r["forwarded"] else request.url.scheme
        host = r["forwarded"][1] if r["forwarded"] else request.headers["host"]
        signed = f"{scheme}://{host}{request.url.raw_path.decode()}"
        signature = RequestValidator(AUTH_TOKEN).compute_signature(signed, r["form"])
        request.headers["X-Twilio-Signature"] = signature if r["signing"] == "valid" else signature[::-1] + "x"
    try:
        return client.send(request)
    except (httpx.ReadError, httpx.RemoteProtocolError):
        # A kept-alive connection the server closed after a body it did not read (uvicorn
        # does): a new connection, once. The gateway's own death is checked at the end.
        return client.send(request)


def webhook_batch(count: Count, examples: int, base: str, client: httpx.Client) -> Callable[[], None]:
    @batch_settings(examples)
    @given(requests())
    def prop(r: Request) -> None:
        with count.trying(r):
            response = send(client, base, r)  # the client's timeout (5 s) is the hang bound
            status = response.status_code
            if status >= 500:
                raise Finding(f"{status} from {r['path']}", response.text[:300])
            # Unsigned: refused (a body that does not parse as a form may be refused as such).
            if r["signing"] != "valid" and status not in ((400, 403) if r["body"] is not None else (403,)):
                raise Finding(f"unsigned request to {r['path']} answered {status}", response.text[:300])

    return prop


def test_fuzz_twilio_webhooks(fuzz_stack: DevStack) -> None:
    with httpx.Client(timeout=5.0) as client:
        count = run_target("twilio webhooks", lambda c, n: webhook_batch(c, n, fuzz_stack.gateway_url, client), 200)
        assert client.get(f"{fuzz_stack.gateway_url}/readyz").status_code == 200
    assert fuzz_stack.processes["gateway"].alive
    assert_clean(count)
