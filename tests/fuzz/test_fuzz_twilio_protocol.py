"""The Twilio media-stream event parser on anything a WebSocket peer can send: it returns an
event or None, or raises ProtocolError; nothing else, and quickly. Outbound messages built
from any stream sid and mark name are JSON that reads back to the same values."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.gateway import twilio_protocol as tp
from tests.fuzz.harness import Count, assert_clean, batch_settings, bounded, pytest_timeout_s, run_target
from tests.fuzz.strategies import JSON_VALUES, SHORT_TEXT, TEXT, mutated

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(pytest_timeout_s())]

VALID = {
    "connected": {"event": "connected", "protocol": "Call", "version": "1.0.0"},
    "start": {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "AC" + "0" * 32,
            "streamSid": "MZ" + "1" * 32,
            "callSid": "CA" + "2" * 32,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"agent_id": "demo", "stream_token": "x.y.z"},
        },
        "streamSid": "MZ" + "1" * 32,
    },
    "media": {
        "event": "media",
        "sequenceNumber": "3",
        "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": base64.b64encode(bytes(160)).decode()},
        "streamSid": "MZ" + "1" * 32,
    },
    "mark": {"event": "mark", "streamSid": "MZ" + "1" * 32, "mark": {"name": "t1.s0.c0"}},
    "dtmf": {"event": "dtmf", "streamSid": "MZ" + "1" * 32, "dtmf": {"track": "inbound_track", "digit": "1"}},
    "stop": {"event": "stop", "streamSid": "MZ" + "1" * 32, "stop": {"accountSid": "AC1", "callSid": "CA1"}},
}


EVENTS = (tp.Connected, tp.Start, tp.Media, tp.MarkEcho, tp.Dtmf, tp.Stop)


@st.composite
def valid_looking(draw: st.DrawFn) -> str:
    """A real event with some of its fields (at any depth) given random JSON values or removed."""
    event: Any = json.loads(json.dumps(VALID[draw(st.sampled_from(sorted(VALID)))]))

    def damage(node: Any) -> None:
        if not isinstance(node, dict) or not node:
            return
        key = draw(st.sampled_from(sorted(node)))
        choice = draw(st.integers(0, 3))
        if choice == 0:
            node[key] = draw(JSON_VALUES)
        elif choice == 1:
            del node[key]
        elif choice == 2:
            node[draw(SHORT_TEXT)] = draw(JSON_VALUES)
        else:
            damage(node[key])

    for _ in range(draw(st.integers(1, 3))):
        damage(event)
    return json.dumps(event, ensure_ascii=draw(st.booleans()))


MESSAGES = st.one_of(
    st.binary(max_size=2048),
    TEXT,
    JSON_VALUES.map(json.dumps),
    st.builds(
        lambda e, rest: json.dumps({"event": e, **rest}),
        st.sampled_from(sorted(VALID)) | TEXT,
        st.dictionaries(SHORT_TEXT, JSON_VALUES, max_size=4),
    ),
    valid_looking(),
    st.sampled_from([json.dumps(v) for v in VALID.values()]).flatmap(mutated),
    # Big payloads and deep nesting: the parser must stay bounded in time and stack.
    st.integers(1, 200_000).map(lambda n: '{"event":"media","media":{"payload":"' + "A" * (4 * n) + '"}}'),
    st.integers(1, 100_000).map(lambda n: '{"event":"start","start":' + "[" * n + "]" * n + "}"),
)


def parser_batch(count: Count, examples: int) -> Callable[[], None]:
    @batch_settings(examples)
    @given(MESSAGES)
    def prop(message: str | bytes) -> None:
        with count.trying(message), bounded(2.0):
            try:
                event = tp.TwilioSerializer.deserialize(message)
            except tp.ProtocolError:
                return
            assert event is None or isinstance(event, EVENTS)

    return prop


def outbound_batch(count: Count, examples: int) -> Callable[[], None]:
    @batch_settings(examples)
    @given(TEXT, TEXT, st.binary(max_size=400))
    def prop(stream_sid: str, mark: str, audio: bytes) -> None:
        with count.trying(stream_sid, mark, audio):
            out = tp.TwilioSerializer(stream_sid)
            assert json.loads(out.mark(mark)) == {"event": "mark", "streamSid": stream_sid, "mark": {"name": mark}}
            media = json.loads(out.media(audio))
            assert base64.b64decode(media["media"]["payload"]) == audio and media["streamSid"] == stream_sid
            assert json.loads(out.clear()) == {"event": "clear", "streamSid": stream_sid}

    return prop


def test_fuzz_twilio_event_parser() -> None:
    assert_clean(run_target("twilio event parser", parser_batch))


def test_fuzz_twilio_outbound_messages() -> None:
    assert_clean(run_target("twilio outbound", outbound_batch))
