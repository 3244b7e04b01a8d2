"""Twilio's side of a media stream that ended while the caller is still on the line.

https://www.twilio.com/docs/voice/twiml/connect#action: when `<Connect>` ends, because
the server closed the stream or the connection to it was lost, Twilio requests the
`action` URL and runs the TwiML it answers: a new `<Connect><Stream>` (the call goes on
through a new stream, perhaps to another server), or `<Say>`/`<Hangup>`/`<Dial>`.
ASSUMPTION: the request carries the usual voice webhook parameters (CallSid, AccountSid,
From, To, CallStatus, Direction) and is signed like every webhook; the page does not list
stream-specific ones, so none are sent.
"""

from __future__ import annotations

import httpx

from voxline.simulator.placement import post_as_twilio
from voxline.simulator.script import CallScript
from voxline.simulator.twilio_stream import ProtocolError, StreamTarget, parse_twiml, twiml_verbs


async def follow_connect_action(
    http: httpx.AsyncClient, action_url: str, script: CallScript, auth_token: str | None
) -> StreamTarget | list[tuple[str, str]]:
    """Request the action; a new stream to connect to, or the verbs Twilio runs instead
    (an unreachable or failing action ends the call: Twilio's "application error")."""
    try:
        response = await post_as_twilio(http, action_url, script, auth_token)
    except httpx.HTTPError as exc:
        return [("Error", f"POST {action_url} failed: {exc!r}")]
    if response.status_code != 200:
        return [("Error", f"POST {action_url} answered HTTP {response.status_code}")]
    try:
        return parse_twiml(response.text, action_url)
    except ProtocolError:
        pass
    try:
        return twiml_verbs(response.text)
    except ProtocolError as exc:
        return [("Error", f"bad TwiML from the action: {exc}")]


def describe(verbs: list[tuple[str, str]]) -> str:
    return " ".join(f"<{verb}>{text}</{verb}>" if text else f"<{verb}>" for verb, text in verbs)
