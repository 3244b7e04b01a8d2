"""`python -m services.gateway`: the Twilio edge and the REST API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from starlette.applications import Starlette

from proto import subjects
from services.gateway.api_keys import ApiKeyStore
from services.gateway.app import Gateway, create_app
from voxline import tracing
from voxline.bus import Bus
from voxline.config import GatewaySettings
from voxline.service import (
    connect_with_retry,
    drain_within,
    install_stop_signals,
    probe_routes,
    serve_http,
    wait_for_stop,
)
from voxline.telemetry import setup_logging

log = logging.getLogger("voxline.gateway")
EXIT_UNSAFE = 78  # EX_CONFIG: a configuration that would leave the gateway open


async def _serve_all(*servers: Coroutine[Any, Any, None]) -> None:
    """Both servers as one task: either failing (a port in use) stops the process."""
    await asyncio.gather(*servers)


async def _stored_api_keys(bus: Bus, settings: GatewaySettings) -> int:
    """How many API keys the store holds; 0 when it cannot be read (or need not be)."""
    if settings.api_key or not settings.exposure_problems() or not bus.connected:
        return 0  # the count could change nothing
    try:
        return await ApiKeyStore(bus).count()
    except Exception as exc:
        log.warning("could not count the stored API keys: %r", exc)
        return 0


def _refuse_if_unsafe(settings: GatewaySettings, stored_api_keys: int) -> None:
    problems = settings.exposure_problems(stored_api_keys)
    if problems:
        for problem in problems:
            log.critical("refusing to start on %s: %s", settings.http_host, problem)
        log.critical("bind to 127.0.0.1 for local use, or set VOXLINE_INSECURE_DEV=1 on a trusted network only")
        raise SystemExit(EXIT_UNSAFE)


async def main(settings: GatewaySettings) -> None:
    # What no stored key can fix is refused before waiting for the bus; with only the API
    # key missing, after connecting: `voxline keys create` may have stored the first one.
    if settings.exposure_problems(stored_api_keys=1):
        _refuse_if_unsafe(settings, 0)
    stop, now, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()
    install_stop_signals(stop, now)
    bus = Bus(f"gateway-{settings.instance_id}")
    bus.kv_replicas = settings.kv_replicas  # its buckets (tokens, claims, stream ends) outlive a node too
    await connect_with_retry(bus, settings, stop)
    try:
        _refuse_if_unsafe(settings, await _stored_api_keys(bus, settings))
    except SystemExit:
        await bus.close()
        raise
    gateway = Gateway(bus, settings)
    if bus.connected:  # the owners of its calls ping it: a dead gateway's calls are ended
        await bus.serve_ping(subjects.gateway_ping(settings.instance_id))
        try:
            await gateway.tokens.prepare()
            await gateway.claims.prepare()
        except Exception as exc:  # made on the first call instead
            log.warning("could not create the stream token and claim buckets yet: %r", exc)
        await gateway.agents.start(bus)  # the agents bucket, watched: no agent, no call
    if settings.twilio_auth_token:
        log.info("Twilio signature validation is on")
    elif settings.insecure_dev:
        log.warning("VOXLINE_INSECURE_DEV: TWILIO_AUTH_TOKEN is not set, webhook signatures are not checked")
    else:
        log.warning("TWILIO_AUTH_TOKEN is not set: webhook signatures are not checked (loopback only)")
    # The server outlives the drain: open media streams and the probes keep being served.
    public = serve_http(
        create_app(gateway), settings.http_host, settings.http_port, finished, settings.ws_max_message_bytes
    )
    internal = Starlette(routes=probe_routes(bus, lambda: gateway))  # /metrics, /status: not on the public port
    http = asyncio.create_task(
        _serve_all(public, serve_http(internal, settings.health_host, settings.health_port, finished))
    )
    await wait_for_stop(stop, http)
    await drain_within("gateway", gateway, settings.drain_timeout_s, now)
    finished.set()
    await http
    await gateway.stop()
    await bus.close()


if __name__ == "__main__":
    gateway_settings = GatewaySettings()
    setup_logging(
        "gateway", gateway_settings.log_level, gateway_settings.log_format, transcripts=gateway_settings.log_transcripts
    )
    tracing.setup("gateway", gateway_settings.instance_id)
    try:
        asyncio.run(main(gateway_settings))
    finally:
        tracing.shutdown()  # the last calls' spans go out before the process does
