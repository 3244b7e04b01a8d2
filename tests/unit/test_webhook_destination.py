"""Which webhook destinations are refused (server-side request forgery): resolved addresses,
not the URL's spelling, decide."""

from __future__ import annotations

import pytest

from voxline.webhooks.destination import Refused, check_destination

ALWAYS_OK = ["http://127.0.0.1:8080/hook", "http://localhost:9/x", "http://[::1]:9/x", "https://8.8.8.8/hook"]
PRIVATE = ["http://10.0.0.5:8222/varz", "https://192.168.1.1/", "http://172.16.0.9/", "http://[fd00::1]/",
           "http://[::ffff:10.0.0.1]/", "http://100.64.0.1/"]  # fmt: skip
NEVER = ["http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/", "http://0.0.0.0:8080/", "http://224.0.0.1/"]


@pytest.mark.parametrize("url", ALWAYS_OK)
async def test_public_and_loopback_destinations_pass(url: str) -> None:
    await check_destination(url, allow_private=False)


@pytest.mark.parametrize("url", PRIVATE)
async def test_private_destinations_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(Refused, match="not a public address"):
        await check_destination(url, allow_private=False)
    await check_destination(url, allow_private=True)


@pytest.mark.parametrize("url", NEVER)
async def test_metadata_link_local_and_unspecified_are_refused_always(url: str) -> None:
    with pytest.raises(Refused):
        await check_destination(url, allow_private=True)


async def test_a_name_is_judged_by_what_it_resolves_to() -> None:
    """`localhost` is a name: it passes because it resolves to loopback, not by its spelling."""
    await check_destination("http://localhost:1/", allow_private=False)
    with pytest.raises(Refused, match="no host"):
        await check_destination("http:///path-only", allow_private=False)
