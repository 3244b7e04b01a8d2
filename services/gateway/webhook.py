"""The webhooks Twilio calls for a call's TwiML: `POST /twilio/voice` (a call came in: we
answer with a media stream), and the callbacks after it (`<Connect action>` when the stream
ended, `<Stream statusCallback>`, `<Dial action>` when a transfer rang out).

The TwiML is built with the `twilio` library and signatures are checked with its
RequestValidator, so protocol details stay with the people who own the protocol.
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode, urlsplit, urlunsplit

from fastapi import Request, WebSocket
from fastapi.responses import Response
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse

from proto.messages import CallDirection
from services.gateway.call_outcomes import CALL_BUSY, DIAL_ANSWERED, CallOutcomes
from services.gateway.media_stream import RESUME_PARAMETER
from services.gateway.stream_token import StreamTokens
from services.gateway.twilio_rest import business_number, dial_twiml
from services.gateway.voicemail import VOICEMAIL_QUERY, answered_by_machine, voicemail_twiml
from voxline.agents import Agent, AgentStore, InvalidAgent, UnknownAgent
from voxline.agents.variables import (
    VARIABLES_PARAMETER,
    VARIABLES_QUERY,
    builtins,
    call_values,
    decode_parameter,
    encode_parameter,
    render,
)
from voxline.config import GatewaySettings

log = logging.getLogger("voxline.gateway.webhook")

MEDIA_PATH = "/twilio/media"
STREAM_ENDED_PATH = "/twilio/stream-ended"  # <Connect action>
STREAM_STATUS_PATH = "/twilio/stream-status"  # <Stream statusCallback>
DIAL_ENDED_PATH = "/twilio/dial-ended"  # <Dial action> of a transfer
DEFAULT_AGENT = Agent(id="", name="", greeting="", system_prompt="")  # its messages, when the agent is unknown


def public_base(request: Request | WebSocket, settings: GatewaySettings) -> str:
    """The base URL Twilio used: VOXLINE_PUBLIC_URL, else the request's own host and
    (forwarded) scheme, so a plain-HTTP local gateway hands out ws:// URLs."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    scheme = request.headers.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip()
    host = request.headers.get("x-forwarded-host", request.headers.get("host", request.url.netloc))
    return f"{scheme}://{host}"


def stream_url(base: str) -> str:
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + MEDIA_PATH, "", ""))


def twiml_response(xml: str, status_code: int = 200) -> Response:
    return Response(content=xml, media_type="application/xml", status_code=status_code)


def agent_says(agent: Agent, text: str, params: dict[str, str], variables: dict[str, str] | None = None) -> str:
    """An agent message Twilio reads out (busy, failure, transfer failed): its placeholders
    filled with the agent's defaults, the call's variables (from its record, when there is
    one) and the built-ins."""
    direction = call_direction(params.get("Direction", ""))
    built_in = builtins(params.get("CallSid", ""), direction, params.get("From", ""), params.get("To", ""))
    return render(text, call_values(agent.default_variables, variables or {}, built_in))


def say_and_hang_up(text: str) -> str:
    response = VoiceResponse()
    response.say(text)
    response.hangup()
    return str(response)


def hang_up() -> str:
    response = VoiceResponse()
    response.hangup()
    return str(response)


def _signed_by_twilio(auth_token: str, url: str, params: dict[str, str], signature: str) -> bool:
    try:
        return bool(RequestValidator(auth_token).validate(url, params, signature))
    except ValueError:  # a forwarded host the URL parser refuses ('[', 'h:x'): not Twilio's
        return False


async def twilio_form(request: Request, settings: GatewaySettings) -> dict[str, str] | Response:
    """The request's form fields if Twilio signed them (when TWILIO_AUTH_TOKEN is set), else
    the 403 to answer. Twilio signs the full URL it requested, query included, plus the
    sorted POST fields: https://www.twilio.com/docs/usage/webhooks/webhooks-security"""
    form = await request.form()
    params = {k: str(v) for k, v in form.items()}
    if settings.twilio_auth_token:
        url = public_base(request, settings) + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        signature = request.headers.get("x-twilio-signature", "")
        if not _signed_by_twilio(settings.twilio_auth_token, url, params, signature):
            # The query's names only: an outbound call's voicemail message rides in it.
            names = ",".join(sorted(request.query_params.keys()))
            where = public_base(request, settings) + request.url.path + (f"?[{names}]" if names else "")
            log.warning("rejected a webhook with a bad X-Twilio-Signature (url %s)", where)
            return Response("invalid Twilio signature", status_code=403, media_type="text/plain")
    return params


def upgrade_signed(ws: WebSocket, settings: GatewaySettings) -> bool:
    """Whether Twilio signed the media WebSocket's upgrade request (when TWILIO_AUTH_TOKEN is
    set). Twilio says to validate X-Twilio-Signature on Media Streams connections
    (https://www.twilio.com/docs/global-infrastructure/firewall-configurations/media-streams-configuration,
    https://www.twilio.com/docs/usage/security#validating-requests). ASSUMPTION, not spelled
    out there: the signed string is the `<Stream url>` we handed out, exactly, with no
    parameters (a GET has none), as for any GET webhook."""
    if not settings.twilio_auth_token:
        return True
    url = stream_url(public_base(ws, settings))
    signature = ws.headers.get("x-twilio-signature", "")
    if _signed_by_twilio(settings.twilio_auth_token, url, {}, signature):
        return True
    log.warning("refused a media WebSocket with a bad or missing X-Twilio-Signature (url %s)", url)
    return False


def _agent(agents: AgentStore, agent_id: str) -> Agent:
    try:
        return agents.get(agent_id) if agent_id else DEFAULT_AGENT
    except (UnknownAgent, InvalidAgent):
        return DEFAULT_AGENT


async def voice_webhook(
    request: Request, settings: GatewaySettings, agents: AgentStore, tokens: StreamTokens, outcomes: CallOutcomes
) -> Response:
    params = await twilio_form(request, settings)
    if isinstance(params, Response):
        return params
    base = public_base(request, settings)
    outcomes.public_base = base
    call_sid = params.get("CallSid", "")
    if not (call_sid.isascii() and call_sid.isalnum()):
        log.warning("webhook without a usable CallSid: %r", call_sid[:64])
        return Response("CallSid missing or invalid", status_code=400, media_type="text/plain")
    agent_id = request.query_params.get("agent") or params.get("agent") or "demo"
    answered_by = params.get("AnsweredBy", "")
    if answered_by_machine(answered_by):
        return await machine_answered(request, params, agent_id, answered_by, outcomes)
    try:
        agents.get(agent_id)
    except UnknownAgent as exc:
        log.error("webhook for an unknown agent: %s", exc, extra={"call_id": call_sid})
        return twiml_response(say_and_hang_up("Sorry, this number is not configured. Goodbye."))
    log.info("answering call for agent %s", agent_id, extra={"call_id": call_sid})
    # The call's variables, from the voice URL Twilio signed (never logged): see variables.py.
    variables = decode_parameter(request.query_params.get(VARIABLES_QUERY, ""))
    return twiml_response(connect_stream(base, call_sid, agent_id, params, tokens, variables=variables))


async def machine_answered(
    request: Request, params: dict[str, str], agent_id: str, answered_by: str, outcomes: CallOutcomes
) -> Response:
    """An outbound call placed with machine detection reached a machine (voicemail.py): the
    voicemail message from the signed voice URL and a hang-up, never a media stream. The
    call gets its record here, as no orchestrator ever sees it."""
    call_sid = params["CallSid"]
    extra = {"call_id": call_sid}
    twiml, reason = voicemail_twiml(answered_by, request.query_params.get(VOICEMAIL_QUERY, ""))
    try:
        variables = decode_parameter(request.query_params.get(VARIABLES_QUERY, ""))
        await outcomes.machine_answered(
            call_sid, agent_id, params.get("From", ""), params.get("To", ""), answered_by, reason, variables
        )
    except Exception as exc:  # the machine must still be answered (and hung up on)
        log.error("could not write the record of a call a machine answered: %s", exc, extra=extra)
    log.info("outbound call answered by %s: %s, then hang-up", answered_by, reason, extra=extra)
    return twiml_response(twiml)


def call_direction(twilio_direction: str) -> CallDirection:
    """Twilio's `Direction` (https://www.twilio.com/docs/voice/twiml#request-parameters):
    `inbound`, or `outbound-api` for a call we placed through the REST API
    (`outbound-dial` is a `<Dial>` leg, never sent to this webhook)."""
    return "outbound" if twilio_direction.startswith("outbound") else "inbound"


def connect_stream(
    base: str,
    call_sid: str,
    agent_id: str,
    params: dict[str, str],
    tokens: StreamTokens,
    resume: bool = False,
    variables: dict[str, str] | None = None,
) -> str:
    """`<Connect><Stream>` to our media WebSocket: for a new call, or again for a call whose
    stream broke (`resume`: the new stream goes on with the call instead of starting one;
    its variables are in the call's record already)."""
    query = urlencode({"agent": agent_id})
    response = VoiceResponse()
    # https://www.twilio.com/docs/voice/twiml/connect#action: when <Connect> ends (our side
    # closed the stream, or it failed) Twilio requests `action` and runs its TwiML; without
    # one the call just ends, in silence.
    connect = Connect(action=f"{base}{STREAM_ENDED_PATH}?{query}")
    # https://www.twilio.com/docs/voice/twiml/stream#statuscallback: stream-started,
    # stream-stopped and stream-error (with StreamError) come to this URL.
    stream = connect.stream(url=stream_url(base), status_callback=f"{base}{STREAM_STATUS_PATH}?{query}")
    stream.parameter(name="agent_id", value=agent_id)
    stream.parameter(name="stream_token", value=tokens.issue(call_sid, agent_id, params.get("AccountSid", "")))
    stream.parameter(name="from", value=params.get("From", ""))
    stream.parameter(name="to", value=params.get("To", ""))
    stream.parameter(name="direction", value=call_direction(params.get("Direction", "")))
    if variables:
        stream.parameter(name=VARIABLES_PARAMETER, value=encode_parameter(variables))
    if resume:
        stream.parameter(name=RESUME_PARAMETER, value="1")
    response.append(connect)
    return str(response)


async def stream_ended(
    request: Request, settings: GatewaySettings, agents: AgentStore, tokens: StreamTokens, outcomes: CallOutcomes
) -> Response:
    """`<Connect action>`: the media stream is over and the caller is still on the line.
    A transfer the agent ordered is dialled (whether or not the REST redirect got through);
    a call the agent ended is hung up; a stream that broke under a call still in progress
    (its gateway died, the link dropped) gets a new stream, on whichever gateway Twilio
    reaches, and the call goes on; anything else (stream refused, failed, too many breaks)
    gets the agent's apology before the hang-up, and an error in the log saying why."""
    params = await twilio_form(request, settings)
    if isinstance(params, Response):
        return params
    call_sid = params.get("CallSid", "")
    if not (call_sid.isascii() and call_sid.isalnum()):
        return Response("CallSid missing or invalid", status_code=400, media_type="text/plain")
    agent_id = request.query_params.get("agent", "")
    agent = _agent(agents, agent_id)
    extra = {"call_id": call_sid}
    number = await outcomes.transfer_to(call_sid)
    if number:
        caller_id = business_number(params.get("Direction", ""), params.get("From", ""), params.get("To", ""))
        action = public_base(request, settings) + DIAL_ENDED_PATH
        log.info("stream ended for a transfer: dialling it from the <Connect> action", extra=extra)
        return twiml_response(dial_twiml(number, settings.transfer_timeout_s, caller_id, action))
    end = await outcomes.stream_end(call_sid)
    if end is not None and end.agent_ended:
        log.info("stream ended by the agent (%s): hanging up", end.reason, extra=extra)
        return twiml_response(hang_up())
    if end is not None and end.reason == CALL_BUSY:
        log.warning("no capacity for the call: the busy message and a hang-up", extra=extra)
        return twiml_response(say_and_hang_up(agent_says(agent, agent.busy_message, params)))
    if (end is None or end.lost) and await _resumable(outcomes, call_sid, settings):
        why = end.reason if end else "its gateway is gone"
        log.warning("media stream broke (%s): a new stream for the call", why, extra=extra)
        twiml = connect_stream(public_base(request, settings), call_sid, agent_id or agent.id, params, tokens, True)
        return twiml_response(twiml)
    if end is not None:
        why = end.reason
    else:
        why = outcomes.stream_error(call_sid) or "no media stream of this call ended on this gateway"
    log.error("media stream failed with the caller on the line (%s): apology and hang-up", why, extra=extra)
    return twiml_response(say_and_hang_up(agent_says(agent, agent.failure_message, params)))


async def _resumable(outcomes: CallOutcomes, call_sid: str, settings: GatewaySettings) -> bool:
    """The call is still in progress (its owner has not ended it: the record says so) and
    has not broken too often; counting this resume."""
    record = await outcomes.record(call_sid)
    if record is None or record.status != "in-progress":
        return False
    resumes = await outcomes.resuming(call_sid)
    if resumes > settings.stream_resumes_max:
        log.error("media stream broke %d times: no new one", resumes, extra={"call_id": call_sid})
        return False
    return True


async def stream_status(request: Request, settings: GatewaySettings, outcomes: CallOutcomes) -> Response:
    """`<Stream statusCallback>`: a stream that Twilio could not open or that broke is
    logged with Twilio's reason (StreamError), which the `<Connect action>` then repeats."""
    params = await twilio_form(request, settings)
    if isinstance(params, Response):
        return params
    call_sid, event = params.get("CallSid", ""), params.get("StreamEvent", "")
    extra = {"call_id": call_sid}
    if event == "stream-error":
        error = params.get("StreamError", "") or "no StreamError given"
        outcomes.stream_failed(call_sid, f"Twilio: {error}")
        log.error("media stream error reported by Twilio: %s", error, extra=extra)
    else:
        log.info("media stream %s (Twilio)", event.removeprefix("stream-") or "status ?", extra=extra)
    return Response(status_code=204)


async def dial_ended(
    request: Request, settings: GatewaySettings, agents: AgentStore, outcomes: CallOutcomes
) -> Response:
    """`<Dial action>` of a transfer: https://www.twilio.com/docs/voice/twiml/dial#action.
    Answered: the human had the caller, and hung up; the call ends. Busy, no answer, failed:
    the caller is told nobody is available instead of being dropped, and the record says so."""
    params = await twilio_form(request, settings)
    if isinstance(params, Response):
        return params
    call_sid, status = params.get("CallSid", ""), params.get("DialCallStatus", "") or "failed"
    extra = {"call_id": call_sid}
    try:
        record = await outcomes.transfer_ended(call_sid, status)
    except Exception as exc:  # the caller must hear the answer even if the record cannot be written
        log.error("could not write the transfer's outcome into the record: %s", exc, extra=extra)
        record = None
    if status in DIAL_ANSWERED:
        log.info("transfer answered; the human hung up (%s)", status, extra=extra)
        return twiml_response(hang_up())
    log.warning("transfer not answered (%s): the caller is told so", status, extra=extra)
    agent = _agent(agents, record.agent_id if record is not None else "")
    variables = record.variables if record is not None else {}
    return twiml_response(say_and_hang_up(agent_says(agent, agent.transfer_failed_message, params, variables)))
