"""Where a webhook may be sent: not into our own network (server-side request forgery).

An agent's `webhook_url` is set through the API by anyone with a key that may edit agents,
and the orchestrator POSTs to it from inside the cluster: pointed at 169.254.169.254 (cloud
metadata), a Kubernetes service or a database, it would make Voxline a proxy into the
private network, and the delivery log (`GET /v1/calls/{id}/webhooks`: status codes,
errors, timings) a port scanner. So the host is resolved before each attempt and every
address it resolves to must be global. Loopback stays allowed: it is the orchestrator's
own host (a receiver during development; agent validation already allows plain http only
there), reachable by nobody else. `VOXLINE_WEBHOOK_ALLOW_PRIVATE=1` opens private ranges
for receivers on a private network.

Known limit: the check and httpx's own connect resolve the name separately, so a DNS
server that answers differently within the same second (rebinding) can still slip by;
closing that needs connecting to the checked address itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit


class Refused(Exception):
    """The destination is not one a webhook may go to; final, never retried."""


def _allowed(address: str, allow_private: bool) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not part of the address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:  # before the reserved ranges: ::1 lies in ::/8
        return True
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return False  # metadata services live at link-local addresses: never, whatever the setting
    return ip.is_global or allow_private  # (Python counts multicast as global: refused above)


async def check_destination(url: str, allow_private: bool) -> None:
    """Raise Refused when `url`'s host resolves to an address a webhook may not reach; a name
    that does not resolve is left to the request (a connection error, retried)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host:
        raise Refused("the URL has no host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return
    for *_, sockaddr in infos:
        address = str(sockaddr[0])
        if not _allowed(address, allow_private):
            raise Refused(f"{host} resolves to {address}, not a public address (VOXLINE_WEBHOOK_ALLOW_PRIVATE)")
