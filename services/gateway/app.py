"""The gateway's HTTP surface: Twilio webhook, media WebSocket, REST API, probes."""

from __future__ import annotations

import asyncio
import logging

import msgspec
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response

from services.gateway import api_errors, calls_api, events_api, knowledge_api, rest_api, webhook
from services.gateway.agents_api import install as install_agents_api
from services.gateway.call_outcomes import CallOutcomes, StreamEnd
from services.gateway.edge_limits import PendingStreams
from services.gateway.media_stream import REFUSED_STREAMS, MediaStream
from services.gateway.stream_claims import StreamClaims
from services.gateway.stream_token import StreamTokens
from services.gateway.twilio_rest import TwilioNotConfigured, TwilioRest
from services.gateway.webhooks_api import install as install_webhooks_api
from voxline.agents import AgentStore
from voxline.bus import Bus
from voxline.config import GatewaySettings
from voxline.service import probe_routes

log = logging.getLogger("voxline.gateway")
PUBLIC_PROBES = ("/healthz", "/readyz")


class GatewayStatus(msgspec.Struct):
    active_calls: int  # open media streams
    calls: list[str]  # their call ids, sorted
    subscriptions: int  # per-call bus subscriptions they hold, together


class Gateway:
    """Holds no conversation logic: it translates between Twilio and the bus."""

    def __init__(self, bus: Bus, settings: GatewaySettings) -> None:
        self.bus = bus
        self.settings = settings
        self.agents = AgentStore(settings.agents_dir)
        self.tokens = StreamTokens(settings.stream_token_secret, settings.stream_token_ttl_s, bus)
        self.claims = StreamClaims(bus, settings.instance_id)
        self.pending = PendingStreams(settings.ws_pending_per_source, settings.ws_pending_max)
        self.streams: set[MediaStream] = set()
        self.twilio = TwilioRest(settings)
        self.outcomes = CallOutcomes(bus)
        self.outcomes.closing_stream = self._closing_stream
        self.draining = False
        self._no_streams = asyncio.Event()  # set while no media stream is open
        self._no_streams.set()

    def ready(self) -> bool:
        return not self.draining

    def opened(self, stream: MediaStream) -> None:
        self.streams.add(stream)
        self._no_streams.clear()

    def closed(self, stream: MediaStream) -> None:
        self.streams.discard(stream)
        if not self.streams:
            self._no_streams.set()

    async def drain(self) -> None:
        """Turn unready (the Service stops sending new calls here) and refuse new webhooks
        with a 503, which Twilio answers with the number's fallback URL or a retry (its
        connection overrides); the media streams already open run until their calls end."""
        self.draining = True
        await self._no_streams.wait()

    def status(self) -> GatewayStatus:
        return GatewayStatus(
            active_calls=len(self.streams),
            calls=sorted(s.call_id for s in self.streams if s.call_id),
            subscriptions=sum(s.status().subscriptions for s in self.streams),
        )

    async def transfer(self, call_sid: str, number: str) -> None:
        """A transfer the agent ordered: remembered first, so the `<Connect action>` can
        still dial it if the REST redirect fails or the REST API is not configured. The
        number is checked against the call's agent first (the brain did; a forged order
        on the bus must not dial either): no record or agent, no transfer."""
        record = await self.outcomes.record(call_sid)
        agent = await self.agents.at(record.agent_id, record.agent_version) if record else self.agents.get("")
        agent.check_transfer(number)  # the agent as the call started
        await self.outcomes.transfer_ordered(call_sid, number)
        if not self.twilio.configured:
            raise TwilioNotConfigured("no Twilio REST API: the transfer is dialled from the <Connect> action")
        base = self.settings.public_url.rstrip("/") or self.outcomes.public_base
        action = f"{base}{webhook.DIAL_ENDED_PATH}" if base else ""
        if not action:
            log.warning("no public URL known: the transfer's <Dial> has no action, an unanswered one ends the call")
        await self.twilio.transfer(call_sid, number, action)

    def _closing_stream(self, call_sid: str) -> StreamEnd | None:
        for stream in self.streams:
            if stream.call_id == call_sid and stream.close_reason:
                return StreamEnd(stream.close_code, stream.close_reason)
        return None

    async def stop(self) -> None:
        await self.twilio.close()


def create_app(gateway: Gateway) -> FastAPI:
    app = FastAPI(title="Voxline gateway", version="1")
    api_errors.install(app)  # one error shape for every /v1 route, whoever installs it

    @app.post("/twilio/voice")
    async def twilio_voice(request: Request) -> Response:
        if gateway.draining:
            log.info("draining: new call refused with 503 for Twilio to retry or fall back")
            return Response("draining", status_code=503, headers={"Retry-After": "1"})
        return await webhook.voice_webhook(request, gateway.settings, gateway.agents, gateway.tokens, gateway.outcomes)

    @app.post(webhook.STREAM_ENDED_PATH)
    async def twilio_stream_ended(request: Request) -> Response:
        return await webhook.stream_ended(request, gateway.settings, gateway.agents, gateway.tokens, gateway.outcomes)

    @app.post(webhook.STREAM_STATUS_PATH)
    async def twilio_stream_status(request: Request) -> Response:
        return await webhook.stream_status(request, gateway.settings, gateway.outcomes)

    @app.post(webhook.DIAL_ENDED_PATH)
    async def twilio_dial_ended(request: Request) -> Response:
        return await webhook.dial_ended(request, gateway.settings, gateway.agents, gateway.outcomes)

    @app.websocket("/twilio/media")
    async def twilio_media(ws: WebSocket) -> None:
        # Refused before the upgrade (a close before accept is an HTTP 403): nothing of an
        # unsigned or surplus connection is read.
        source = ws.client.host if ws.client else "?"
        slot = gateway.pending.admit(source)
        if slot is None:
            REFUSED_STREAMS.labels(reason="too many pending").inc()
            log.warning("refused a media WebSocket: too many unauthenticated ones open (%s)", source)
            await ws.close(code=1008)
            return
        if not webhook.upgrade_signed(ws, gateway.settings):
            slot.release()
            REFUSED_STREAMS.labels(reason="bad signature").inc()
            await ws.close(code=1008)
            return
        stream = MediaStream(
            ws,
            gateway.bus,
            gateway.settings,
            gateway.tokens,
            gateway.transfer,
            gateway.outcomes.stream_ended,
            claims=gateway.claims,
            pending=slot,
        )
        gateway.opened(stream)
        try:
            await stream.run()
        finally:
            slot.release()
            gateway.closed(stream)

    install_agents_api(app, gateway.agents)  # /v1/agents
    knowledge_api.install(app, gateway.bus, gateway.agents, gateway.settings.knowledge_max_bytes)  # .../knowledge
    rest_api.install(app, gateway.settings, gateway.agents, gateway.twilio, gateway.outcomes)
    calls_api.install(app, gateway.bus)
    install_webhooks_api(app, gateway.bus)  # GET /v1/calls/{id}/webhooks
    events_api.install(app, gateway.bus, gateway.settings.sse_max_streams)  # GET /v1/calls/{id}/events
    # /metrics and /status are internal: only the health port serves them (__main__), never
    # this public port the Ingress exposes; the probes stay here for load balancers too.
    for route in probe_routes(gateway.bus, lambda: gateway):
        if route.path in PUBLIC_PROBES:
            app.router.routes.append(route)
    return app
