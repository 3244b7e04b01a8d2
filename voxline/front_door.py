"""`python -m voxline.front_door`: one public address in front of several local gateways.

What a Kubernetes Service or a cloud load balancer is in production, for `voxline up
--replicas N`: Twilio (or the simulator) is given one URL, each new TCP connection goes to
the next gateway in turn, and a gateway that refuses the connection (it died, it is
restarting) is skipped for the next one. Only new connections move: a media stream stays
on the gateway it started on for its whole life, and when that gateway dies Twilio's
`<Connect action>` comes back through here to one that is up.

It relays bytes and knows nothing of HTTP, so WebSocket upgrades, webhooks and the REST API
pass through unchanged. A draining gateway still accepts connections (its open streams need
the port): like a Service without its readiness probe, the front door does not look at
`/readyz`; the gateway answers new webhooks with 503 itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import signal

log = logging.getLogger("voxline.front_door")

CONNECT_TIMEOUT_S = 1.0
CHUNK = 64 * 1024


class FrontDoor:
    def __init__(self, backends: list[tuple[str, int]]) -> None:
        if not backends:
            raise ValueError("the front door needs at least one gateway")
        self.backends = backends
        self._turn = itertools.cycle(range(len(backends)))
        self.connections = 0

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The next gateway that accepts the connection, trying each one once."""
        first = next(self._turn)
        for i in range(len(self.backends)):
            host, port = self.backends[(first + i) % len(self.backends)]
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError):
                log.info("gateway %s:%d refused the connection; trying the next", host, port)
        return None

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        upstream = await self._connect()
        if upstream is None:
            log.error("no gateway accepted the connection")
            client_w.close()
            return
        gateway_r, gateway_w = upstream
        try:
            await asyncio.gather(_pipe(client_r, gateway_w), _pipe(gateway_r, client_w))
        finally:
            for writer in (client_w, gateway_w):
                writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction until it ends; a reset (a gateway killed) ends both."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()  # the other side sees the connection drop, as it did here


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def serve(listen: tuple[str, int], backends: list[tuple[str, int]]) -> None:
    door = FrontDoor(backends)
    server = await asyncio.start_server(door.handle, listen[0], listen[1])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("front door on %s:%d for %d gateways", *listen, len(backends))
    async with server:
        await stop.wait()
    with contextlib.suppress(Exception):
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="host:port to listen on")
    parser.add_argument("--backend", action="append", required=True, help="host:port of a gateway (repeat)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s front_door %(levelname)s %(message)s")
    asyncio.run(serve(_address(args.listen), [_address(b) for b in args.backend]))


if __name__ == "__main__":
    main()
