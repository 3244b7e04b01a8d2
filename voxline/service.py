"""How every Voxline process runs: logs, bus connection, probes, clean shutdown.

Kubernetes needs `/healthz` (the process is alive) and `/readyz` (it can take work: the
bus is connected and the models are loaded); Prometheus scrapes `/metrics`; `/status`
shows per-call resources so tests and operators can check that a call released them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from voxline import tracing
from voxline.bus import Bus
from voxline.config import CommonSettings, WorkerSettings
from voxline.memtrace import MemoryTrace
from voxline.metrics import NATS_SLOW_CONSUMERS, exposition
from voxline.nats_auth import redact_url
from voxline.telemetry import setup_logging

log = logging.getLogger("voxline.service")


class Worker(Protocol):
    def ready(self) -> bool: ...

    def status(self) -> msgspec.Struct:
        """What `/status` shows: per-call resources, so a test or an operator can check that
        a call released them. A typed value, so the shape is the same in every service."""
        ...

    async def drain(self) -> None:
        """Take no new work (turn unready, leave the work queues) and return once nothing
        held is left: a rolling update replaces a process without ending a caller's call."""
        ...

    async def stop(self) -> None: ...


def probe_routes(bus: Bus, worker: Callable[[], Worker | None]) -> list[Route]:
    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(_: Request) -> Response:
        current = worker()
        if bus.connected and current is not None and current.ready():
            return PlainTextResponse("ready")
        return PlainTextResponse("not ready", status_code=503)

    async def metrics(request: Request) -> Response:
        body, content_type = exposition(request.headers.get("accept", ""))
        return Response(body, media_type=content_type)

    async def status(_: Request) -> Response:
        current = worker()
        body = msgspec.to_builtins(current.status()) if current is not None else {}
        return JSONResponse({"bus_connected": bus.connected, **body})

    NATS_SLOW_CONSUMERS.set_function(lambda: len(bus.slow_consumer_sids))
    return [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/status", status),
    ]


def install_stop_signals(stop: asyncio.Event, now: asyncio.Event | None = None) -> None:
    """The first SIGINT/SIGTERM sets `stop` (drain, then stop); a second one sets `now`."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set() and now is not None:
            now.set()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)


async def wait_for_stop(stop: asyncio.Event, http: asyncio.Task[None]) -> None:
    """Wait for the stop signal; an HTTP server that failed (a port in use) raises here
    instead of leaving a process that serves nothing."""
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({stopped, http}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if http.done():
        http.result()
        raise RuntimeError("the HTTP server stopped by itself")


async def drain_within(service: str, worker: Worker, timeout_s: float, now: asyncio.Event) -> bool:
    """Let `worker` finish what it holds, for at most `timeout_s` or until a second signal;
    True if it finished. What is still held afterwards is ended by `stop()`."""
    log.info("%s draining: no new work; up to %.0fs for what it holds (signal again to stop now)", service, timeout_s)
    drain = asyncio.create_task(worker.drain())
    interrupt = asyncio.create_task(now.wait())
    done, _ = await asyncio.wait({drain, interrupt}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    for task in (drain, interrupt):
        task.cancel()
    if drain in done and not drain.cancelled() and drain.exception() is None:
        log.info("%s drained: nothing held", service)
        return True
    if drain in done and not drain.cancelled():
        log.error("%s drain failed: %r", service, drain.exception())
    else:
        why = "a second signal" if interrupt in done else f"the {timeout_s:.0f}s drain deadline"
        log.warning("%s stopping on %s with work still held", service, why)
    return False


class _Server(uvicorn.Server):
    """Voxline owns SIGINT/SIGTERM (one stop event per process); uvicorn must not take them."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()


async def serve_http(app: Any, host: str, port: int, stop: asyncio.Event, ws_max_size: int = 16 * 1024 * 1024) -> None:
    """Serve until `stop` is set; print the bound port so a supervisor can find it.
    `ws_max_size`: a bigger WebSocket message closes the connection (1009) before it is
    buffered whole."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        ws="websockets-sansio",
        ws_max_size=ws_max_size,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():  # noqa: ASYNC110 (uvicorn offers no started event)
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
    for sock in server.servers[0].sockets if server.servers else []:
        log.info("listening on http://%s:%d", *sock.getsockname()[:2])
    await stop.wait()
    server.should_exit = True
    await task


def run_worker(
    service: str,
    settings: WorkerSettings,
    start: Callable[[Bus, Any], Awaitable[Worker]],
) -> None:
    """Entry point of the stt, brain, tts and orchestrator processes."""
    setup_logging(service, settings.log_level, settings.log_format, transcripts=settings.log_transcripts)
    tracing.setup(service, settings.instance_id)
    try:
        asyncio.run(_run_worker(service, settings, start))
    finally:
        tracing.shutdown()  # the last calls' spans go out before the process does


async def _run_worker(service: str, settings: WorkerSettings, start: Callable[[Bus, Any], Awaitable[Worker]]) -> None:
    stop, now, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()
    install_stop_signals(stop, now)
    if settings.memory_trace_dir:  # a soak's leak hunt: SIGUSR1 reports what grew
        trace = MemoryTrace(settings.memory_trace_dir, service)
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, trace.report)
    bus = Bus(f"{service}-{settings.instance_id}")
    bus.kv_replicas = settings.kv_replicas
    holder: list[Worker] = []
    app = Starlette(routes=probe_routes(bus, lambda: holder[0] if holder else None))
    # The probes outlive the drain: liveness must hold while the last calls finish.
    http = asyncio.create_task(serve_http(app, settings.health_host, settings.health_port, finished))
    await connect_with_retry(bus, settings, stop)
    if not stop.is_set():
        holder.append(await start(bus, settings))
        log.info("%s ready (instance %s, profile %s)", service, settings.instance_id, settings.profile)
    await wait_for_stop(stop, http)
    if holder:
        await drain_within(service, holder[0], settings.drain_timeout_s, now)
    log.info("%s stopping", service)
    if holder:
        await holder[0].stop()
    await bus.close()
    finished.set()
    await http


async def connect_with_retry(bus: Bus, settings: CommonSettings, stop: asyncio.Event) -> None:
    """The bus may start after us (Kubernetes gives no order): retry until it is there."""
    delay = 0.1
    while not stop.is_set():
        # nats-py retries an unreachable server inside connect() for ever: a stop meanwhile
        # (SIGTERM) must end the attempt, or the process outlives its grace period.
        connecting = asyncio.create_task(
            bus.connect(
                settings.nats_url,
                user=settings.nats_user,
                password=settings.nats_password,
                tls_ca_file=settings.nats_tls_ca_file,
            )
        )
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
            return
        try:
            connecting.result()
            return
        except Exception as exc:
            log.warning("nats at %s not reachable (%s); retrying in %.1fs", redact_url(settings.nats_url), exc, delay)
            try:
                async with asyncio.timeout(delay):
                    await stop.wait()
            except TimeoutError:
                pass
            delay = min(delay * 2, 2.0)
