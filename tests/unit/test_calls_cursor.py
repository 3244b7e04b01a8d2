"""The call listing's pure parts: the cursor (round trip, any edit refused, bound to its
filters), paging (every call exactly once, ties on the start time included), the time
filters, and the OpenAPI models naming exactly the record's fields."""

from __future__ import annotations

import base64
import random

import msgspec
import pytest
from fastapi.exceptions import RequestValidationError

from proto.records import CallRecord, TurnRecord
from services.gateway.calls_api import (
    CallFilters,
    CallSummary,
    InvalidCursor,
    decode_cursor,
    encode_cursor,
    page,
    parse_time,
)
from services.gateway.calls_models import CALL_FIELDS, TURN_FIELDS, CallRecordOut, CallSummaryOut


def summary(n: int, started_at_us: int, **fields: str) -> CallSummary:
    return CallSummary(
        call_id=f"CA{n:032x}",
        agent_id=fields.get("agent_id", "demo"),
        status="ended",
        started_at_us=started_at_us,
    )


def test_a_cursor_round_trips_its_position() -> None:
    filters = CallFilters(agent_id="demo", direction="outbound")
    position = (1_796_360_400_123_456, "CA00ff")
    assert decode_cursor(encode_cursor(position, filters), filters) == position


def test_every_edit_of_a_cursor_is_refused() -> None:
    """Change any one character of the token, or any one byte of what it encodes: 400."""
    filters = CallFilters()
    token = encode_cursor((1_796_360_400_000_000, "CA0123"), filters)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, ch in enumerate(token):
        edited = token[:i] + alphabet[(alphabet.index(ch) + 1) % len(alphabet)] + token[i + 1 :]
        with pytest.raises(InvalidCursor):
            decode_cursor(edited, filters)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    forged = raw.replace(b"1796360400000000", b"1796360500000000")
    assert forged != raw
    with pytest.raises(InvalidCursor):
        decode_cursor(base64.urlsafe_b64encode(forged).decode(), filters)
    for junk in ("", "x", "!!!!", "é", "A" * 600, base64.urlsafe_b64encode(b"[1,2]").decode()):
        with pytest.raises(InvalidCursor):
            decode_cursor(junk, filters)


def test_a_cursor_only_goes_with_the_filters_it_was_made_for() -> None:
    token = encode_cursor((1, "CA1"), CallFilters(agent_id="demo"))
    with pytest.raises(InvalidCursor, match="other filters"):
        decode_cursor(token, CallFilters(agent_id="sales"))
    with pytest.raises(InvalidCursor, match="other filters"):
        decode_cursor(token, CallFilters())


def test_paging_shows_every_call_once_newest_first_even_with_equal_start_times() -> None:
    rng = random.Random(7)
    calls = [summary(n, 1_000 + rng.randrange(20)) for n in range(137)]  # many share a start time
    rng.shuffle(calls)
    filters = CallFilters()
    seen: list[CallSummary] = []
    after = None
    for _ in range(100):
        shown, next_position = page(calls, filters, after, 10)
        seen += shown
        if next_position is None:
            break
        # through the cursor, as a client would
        after = decode_cursor(encode_cursor(next_position, filters), filters)
    assert len(seen) == 137
    assert len({c.call_id for c in seen}) == 137
    keys = [(c.started_at_us, c.call_id) for c in seen]
    assert keys == sorted(keys, reverse=True)


def test_a_page_that_ends_exactly_at_the_last_call_has_no_next_cursor() -> None:
    calls = [summary(n, n) for n in range(20)]
    shown, position = page(calls, CallFilters(), None, 20)
    assert len(shown) == 20 and position is None
    shown, position = page(calls, CallFilters(), None, 19)
    assert position == (1, calls[1].call_id)


def test_filters_match_agent_number_and_time_range() -> None:
    call = msgspec.structs.replace(
        summary(1, 5_000_000), from_number="+15005550006", to_number="+15005550001", direction="outbound"
    )
    assert CallFilters(number="+15005550006").matches(call)
    assert CallFilters(number="+15005550001").matches(call)
    assert not CallFilters(number="+15005550002").matches(call)
    assert CallFilters(direction="outbound", agent_id="demo").matches(call)
    assert not CallFilters(direction="inbound").matches(call)
    assert CallFilters(started_after_us=5_000_000, started_before_us=5_000_001).matches(call)
    assert not CallFilters(started_before_us=5_000_000).matches(call)  # before is exclusive


@pytest.mark.parametrize(
    ("text", "expected_us"),
    [
        ("1796360400", 1_796_360_400_000_000),
        ("1796360400.5", 1_796_360_400_500_000),
        ("2026-12-04T05:00:00Z", 1_796_360_400_000_000),
        ("2026-12-04T06:00:00+01:00", 1_796_360_400_000_000),
        ("2026-12-04T05:00:00", 1_796_360_400_000_000),  # no zone: UTC
        (None, None),
    ],
)
def test_times_are_iso_8601_or_epoch_seconds(text: str | None, expected_us: int | None) -> None:
    assert parse_time("started_after", text) == expected_us


def test_a_bad_time_is_a_422_naming_its_field() -> None:
    with pytest.raises(RequestValidationError) as raised:
        parse_time("started_before", "yesterday")
    assert raised.value.errors()[0]["loc"] == ("query", "started_before")


def test_the_openapi_models_have_the_records_fields_and_describe_only_real_ones() -> None:
    record_fields = {f.name for f in msgspec.structs.fields(CallRecord)}
    turn_fields = {f.name for f in msgspec.structs.fields(TurnRecord)}
    assert set(CallRecordOut.model_fields) == record_fields
    assert set(CallSummaryOut.model_fields) == record_fields - {"turns"}
    assert {f.name for f in msgspec.structs.fields(CallSummary)} <= record_fields
    assert set(CALL_FIELDS) <= record_fields and set(TURN_FIELDS) <= turn_fields  # no renamed leftovers
    assert all(m.is_required() for m in CallRecordOut.model_fields.values())  # msgspec writes them all


def test_a_record_as_served_validates_against_its_documented_model() -> None:
    record = CallRecord(
        call_id="CA1",
        call_sid="CA1",
        agent_id="demo",
        status="ended",
        started_at_us=1,
        turns=[TurnRecord(turn_id=1, kind="greeting", reply_text="Hello.", latency={"first_media_sent": 3.5})],
    )
    served = msgspec.json.encode(record)
    assert CallRecordOut.model_validate_json(served).model_dump(mode="json") == msgspec.json.decode(served)
