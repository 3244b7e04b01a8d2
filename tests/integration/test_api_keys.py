"""REST API keys end to end (issue 12): a real nats-server and a real gateway bound beyond
loopback (0.0.0.0) with no VOXLINE_API_KEY, keys made, listed and revoked by the real
`voxline keys` command as a subprocess writing to the key store over NATS."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import own_stack
from voxline.devstack import DevStack

RATE_PER_MIN = 30


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    env = {
        "VOXLINE_HTTP_HOST": "0.0.0.0",
        "VOXLINE_API_RATE_LIMIT_PER_MIN": str(RATE_PER_MIN),
        "VOXLINE_STREAM_TOKEN_SECRET": "api-keys-test-stream-token-secret-0001",
        # Only so the gateway starts with no key anywhere yet (it refuses to beyond loopback
        # otherwise); it never opens /v1, which the first test shows.
        "VOXLINE_INSECURE_DEV": "1",
    }
    with own_stack(tmp_path_factory, "apikeys", env) as s:
        yield s


def voxline_keys(stack: DevStack, *args: str) -> str:
    """The command as an operator runs it where a gateway runs: with the gateway's NATS user."""
    assert stack.nats_users is not None
    done = subprocess.run(
        [sys.executable, "-m", "voxline.cli", "keys", "--nats-url", stack.nats_url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **stack.nats_users.env_for("gateway")},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def create_key(stack: DevStack, name: str, scope: str) -> tuple[str, str]:
    """(id, key) as `voxline keys create` prints them."""
    out = voxline_keys(stack, "create", "--name", name, "--scope", scope)
    kid = re.search(r"^id:\s+(\S+)$", out, re.M)
    key = re.search(r"^key:\s+(vxk_\S+)$", out, re.M)
    assert kid and key, out
    return kid.group(1), key.group(1)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_v1_needs_a_key_on_a_gateway_beyond_loopback(keyed: DevStack) -> None:
    """The attack: /v1 answered anyone when VOXLINE_API_KEY was unset (failed before: 200).
    Here no key exists at all yet (the module's first test)."""
    response = httpx.get(f"{keyed.gateway_url}/v1/agents")
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_read_key_reads_places_no_call_and_stops_working_once_revoked(keyed: DevStack) -> None:
    kid, key = create_key(keyed, "dashboard", "read")
    url = keyed.gateway_url
    assert httpx.get(f"{url}/v1/agents", headers=auth(key)).status_code == 200
    assert httpx.get(f"{url}/v1/agents").status_code == 401
    assert httpx.get(f"{url}/v1/agents", headers=auth(key[:-1] + ("A" if key[-1] != "A" else "B"))).status_code == 401

    placing = httpx.post(f"{url}/v1/calls", json={"to": "+15551234567"}, headers=auth(key))
    assert placing.status_code == 403, placing.text
    assert 'error="insufficient_scope"' in placing.headers["www-authenticate"]

    listed = voxline_keys(keyed, "list")
    [row] = [line for line in listed.splitlines() if line.startswith(kid)]
    assert row.split()[1:3] == ["dashboard", "read"] and row.split()[-1] == "no"
    assert key[len("vxk_") + 13 :] not in listed  # never the secret

    assert f"revoked {kid}" in voxline_keys(keyed, "revoke", kid)
    # The attack: a revoked key kept working. Every gateway re-reads a key within 2 s.
    revoked_at = time.monotonic()
    while (status := httpx.get(f"{url}/v1/agents", headers=auth(key)).status_code) != 401:
        assert status in (200, 429)
        assert time.monotonic() - revoked_at < 5, "revoked key still accepted after 5 s"
        time.sleep(0.25)
    assert [line.split()[-1] for line in voxline_keys(keyed, "list").splitlines() if line.startswith(kid)] == ["yes"]


def test_a_calls_key_may_place_calls(keyed: DevStack) -> None:
    _, key = create_key(keyed, "crm", "calls")
    placing = httpx.post(f"{keyed.gateway_url}/v1/calls", json={"to": "+15551234567"}, headers=auth(key))
    assert placing.status_code == 400, placing.text  # past the key: no Twilio number to call from


def test_a_key_over_its_rate_limit_gets_429_and_others_do_not(keyed: DevStack) -> None:
    _, busy = create_key(keyed, "busy", "read")
    _, quiet = create_key(keyed, "quiet", "read")
    statuses: list[int] = []
    with httpx.Client(base_url=keyed.gateway_url, headers=auth(busy)) as http:
        while 429 not in statuses and len(statuses) < 2 * RATE_PER_MIN:
            response = http.get("/v1/agents")
            statuses.append(response.status_code)
    assert statuses[-1] == 429, statuses
    assert statuses[:RATE_PER_MIN] == [200] * RATE_PER_MIN  # a minute's worth in a burst
    assert 1 <= int(response.headers["retry-after"]) <= 60 / RATE_PER_MIN
    assert httpx.get(f"{keyed.gateway_url}/v1/agents", headers=auth(quiet)).status_code == 200
