"""The TwiML for an outbound call a machine answered (services/gateway/voicemail.py), and
the `POST /v1/calls` body's detection fields: what Twilio would do with it, read back as
XML, not as strings we happen to produce."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from pydantic import ValidationError

from services.gateway.rest_api import OutboundCall
from services.gateway.voicemail import answered_by_machine, voicemail_twiml


def verbs(xml: str) -> list[tuple[str, str]]:
    root = ET.fromstring(xml)
    assert root.tag == "Response"
    return [(e.tag, e.text or "") for e in root]


@pytest.mark.parametrize("answered_by", ["machine_end_beep", "machine_end_silence", "machine_end_other"])
def test_a_machine_hears_the_message_once_then_the_call_hangs_up(answered_by: str) -> None:
    twiml, reason = voicemail_twiml(answered_by, "  Call us back at <5> & ask for Ann.  ")
    assert verbs(twiml) == [("Say", "Call us back at <5> & ask for Ann."), ("Hangup", "")]
    assert reason == "voicemail"


def test_no_message_or_a_fax_only_hangs_up() -> None:
    assert voicemail_twiml("machine_end_beep", " ") == (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup /></Response>',
        "machine",
    )
    twiml, reason = voicemail_twiml("fax", "nobody reads this")
    assert (verbs(twiml), reason) == ([("Hangup", "")], "machine")


@pytest.mark.parametrize(
    ("answered_by", "machine"),
    [("human", False), ("unknown", False), ("", False), ("fax", True), ("machine_start", True), ("Machine", False)],
)
def test_only_machines_and_faxes_skip_the_agent(answered_by: str, machine: bool) -> None:
    assert answered_by_machine(answered_by) is machine


def test_the_body_fields() -> None:
    plain = OutboundCall.model_validate({"to": "+15005550101"})
    assert (plain.machine_detection, plain.voicemail_message) == (False, "")
    on = OutboundCall.model_validate({"to": "+15005550101", "machine_detection": True, "voicemail_message": "Hi"})
    assert (on.machine_detection, on.voicemail_message) == (True, "Hi")
    for bad, field in (
        ({"machine_detection": "yes"}, "machine_detection"),
        ({"voicemail_message": "Hi"}, "voicemail_message"),
        ({"machine_detection": True, "voicemail_message": "x" * 1001}, "voicemail_message"),
    ):
        with pytest.raises(ValidationError) as caught:
            OutboundCall.model_validate({"to": "+15005550101", **bad})
        assert caught.value.errors()[0]["loc"] == (field,)
    example = OutboundCall.model_json_schema()["examples"][0]
    assert OutboundCall.model_validate(example).machine_detection is True
