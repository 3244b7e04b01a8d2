"""REST API keys (issue 12): the key's shape and hash, the scopes, the per-key token bucket,
and the gateway's /v1 guard in process on a real bus. Nothing here writes to the key store:
the unit tests share one nats-server, and an API key in it would close /v1 on loopback for
every other gateway test (tests/integration/test_api_keys.py uses a stack of its own)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from proto.records import ApiKeyRecord, ApiScope
from services.gateway.api_keys import (
    KEY_PREFIX,
    RateLimiter,
    TokenBucket,
    allows,
    hash_key,
    key_id,
    key_matches,
    required_scope,
    same_secret,
)
from services.gateway.app import Gateway, create_app
from services.gateway.rest_api import bearer
from voxline.bus import Bus
from voxline.config import GatewaySettings, is_loopback

KEY = "vxk_0123456789ab_" + "A" * 43


def record_of(key: str, scopes: list[ApiScope], revoked: bool = False) -> ApiKeyRecord:
    kid = key_id(key)
    assert kid is not None
    return ApiKeyRecord(id=kid, name="t", scopes=scopes, key_hash=hash_key(key), created_at_us=1, revoked=revoked)


# --- keys and their hashes ---------------------------------------------------------------


def test_the_store_keeps_the_sha256_of_the_key_never_the_key() -> None:
    record = record_of(KEY, ["read"])
    assert record.key_hash == hashlib.sha256(KEY.encode()).hexdigest()
    assert KEY not in repr(record) and KEY[17:] not in repr(record)


def test_a_key_is_recognisable_and_names_its_record() -> None:
    assert KEY.startswith(KEY_PREFIX) and len(KEY) == 60
    assert key_id(KEY) == "0123456789ab"


@pytest.mark.parametrize(
    "token",
    ["", "vxk_", KEY[:-1], KEY + "A", "vxk_0123456789AB_" + "A" * 43, "xyz_0123456789ab_" + "A" * 43, "vxk_../../x_a"],
)
def test_a_malformed_key_names_no_record(token: str) -> None:
    assert key_id(token) is None


def test_only_the_exact_key_matches_its_record() -> None:
    record = record_of(KEY, ["read"])
    assert key_matches(record, KEY)
    assert not key_matches(record, KEY[:-1] + "B")  # same id, another secret
    assert same_secret("bootstrap-key", "bootstrap-key")
    assert not same_secret("bootstrap-key", "bootstrap-ke")
    assert not same_secret("", "bootstrap-key")


# --- scopes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        ("GET", "/v1/agents", "read"),
        ("GET", "/v1/calls/CA123", "read"),
        ("HEAD", "/v1/agents", "read"),
        ("POST", "/v1/calls", "calls"),
        ("POST", "/v1/calls/", "calls"),
        ("POST", "/v1/agents", "admin"),
        ("DELETE", "/v1/calls/CA123", "admin"),
        ("PUT", "/v1/calls", "admin"),
    ],
)
def test_each_request_needs_the_least_scope_that_covers_it(method: str, path: str, needed: ApiScope) -> None:
    assert required_scope(method, path) == needed


def test_scopes_nest_read_in_calls_in_admin() -> None:
    grants: dict[ApiScope, set[ApiScope]] = {
        "read": {"read"},
        "calls": {"read", "calls"},
        "admin": {"read", "calls", "admin"},
    }
    for held, granted in grants.items():
        for needed in ("read", "calls", "admin"):
            assert allows([held], needed) == (needed in granted), (held, needed)
    assert not allows([], "read")


# --- the per-key rate limit ---------------------------------------------------------------


def test_a_bucket_holds_a_minutes_worth_then_refills_at_the_rate() -> None:
    bucket = TokenBucket(per_min=60, now=100.0)
    assert all(bucket.take(100.0) == 0.0 for _ in range(60))
    assert bucket.take(100.0) == pytest.approx(1.0)  # one a second
    assert bucket.take(100.5) == pytest.approx(0.5)
    assert bucket.take(101.0) == 0.0
    assert bucket.take(101.0) > 0.0
    bucket.take(10_000.0)  # a long idle refills to the capacity, no more
    assert sum(bucket.take(10_000.0) == 0.0 for _ in range(100)) == 59


def test_each_key_has_its_own_bucket_and_zero_means_no_limit() -> None:
    limiter = RateLimiter(per_min=2)
    assert limiter.wait_s("a", now=0.0) == 0.0
    assert limiter.wait_s("a", now=0.0) == 0.0
    assert limiter.wait_s("a", now=0.0) == pytest.approx(30.0)
    assert limiter.wait_s("b", now=0.0) == 0.0
    unlimited = RateLimiter(per_min=0)
    assert all(unlimited.wait_s("a", now=0.0) == 0.0 for _ in range(1000))


# --- the gateway's guard ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        *[("127.0.0.1", True), ("::1", True), ("localhost", True), ("127.0.0.2", True)],
        *[("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("gateway.example.com", False)],
    ],
)
def test_loopback_is_only_this_machine(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_bearer_token_is_read_from_the_authorization_header() -> None:
    assert bearer(f"Bearer {KEY}") == KEY
    assert bearer(f"bearer  {KEY} ") == KEY
    assert bearer(f"Basic {KEY}") == ""
    assert bearer("Bearer ") == ""
    assert bearer("Bearer " + "x" * 5000) == ""


@pytest.fixture
async def gateway_app(worker_bus: Bus) -> AsyncIterator[Any]:
    """Returns a function making an in-process gateway with these settings on the real bus."""
    made: list[Gateway] = []

    def make(**settings: Any) -> httpx.AsyncClient:
        gateway = Gateway(worker_bus, GatewaySettings(**settings))
        made.append(gateway)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://gw")

    yield make
    for gateway in made:
        await gateway.stop()


async def test_v1_is_closed_without_a_key_when_the_gateway_listens_beyond_loopback(gateway_app: Any) -> None:
    """The attack: a gateway on 0.0.0.0 with no VOXLINE_API_KEY answered /v1 to anyone
    (failed before: 200 and the agent list)."""
    async with gateway_app(http_host="0.0.0.0") as http:
        response = await http.get("/v1/agents")
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert (await http.get("/v1/calls/CA123")).status_code == 401
        assert (await http.get("/healthz")).status_code == 200  # probes stay open for load balancers


async def test_v1_is_open_on_loopback_with_no_key_anywhere(gateway_app: Any) -> None:
    """`make run` stays zero-config: loopback, no VOXLINE_API_KEY, an empty key store."""
    async with gateway_app(http_host="127.0.0.1") as http:
        assert (await http.get("/v1/agents")).status_code == 200


async def test_the_bootstrap_key_is_an_admin_key(gateway_app: Any) -> None:
    async with gateway_app(http_host="0.0.0.0", api_key="bootstrap-secret-" + "b" * 20) as http:
        good = {"Authorization": "Bearer bootstrap-secret-" + "b" * 20}
        assert (await http.get("/v1/agents", headers=good)).status_code == 200
        # admin reaches POST /v1/calls: refused for its body (no Twilio number), not for the key
        assert (await http.post("/v1/calls", json={"to": "+15551234567"}, headers=good)).status_code == 400
        assert (await http.get("/v1/agents", headers={"Authorization": "Bearer wrong"})).status_code == 401
        # a well-formed key the store does not hold
        refused = await http.get("/v1/agents", headers={"Authorization": f"Bearer {KEY}"})
        assert refused.status_code == 401
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]


async def test_a_key_over_its_rate_limit_gets_429_with_retry_after(gateway_app: Any) -> None:
    async with gateway_app(http_host="127.0.0.1", api_key="k" * 32, api_rate_limit_per_min=3) as http:
        headers = {"Authorization": "Bearer " + "k" * 32}
        assert [(await http.get("/v1/agents", headers=headers)).status_code for _ in range(3)] == [200] * 3
        over = await http.get("/v1/agents", headers=headers)
        assert over.status_code == 429
        assert 1 <= int(over.headers["retry-after"]) <= 20  # a token every 20 s
