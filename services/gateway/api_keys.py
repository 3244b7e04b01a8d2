"""REST API keys: made and revoked by `voxline keys`, checked by every gateway on `/v1/*`.

A key is `vxk_<id>_<secret>`: the prefix makes a leaked key recognisable (secret
scanners, log redaction), the id (12 hex digits, not secret) names its record in the
JetStream KV bucket `API_KEYS_BUCKET`, and the secret is 256 random bits
(`secrets.token_urlsafe(32)`). The store keeps only the SHA-256 of the whole key.

Why a plain SHA-256 and not bcrypt/scrypt/argon2: slow hashes protect *low-entropy*
secrets (passwords a person chose), where an attacker holding the hashes can try likely
guesses. A 256-bit random secret has no likely guesses: inverting its SHA-256 is a
2^256 search however fast the hash is. A fast hash keeps the check to microseconds on
every request and needs no new dependency. The stored hash is compared with the hash of
the presented key in constant time (`hmac.compare_digest`), so timing tells nothing.

Scopes nest: `read` (GET /v1/*), `calls` (read + POST /v1/calls), `admin` (everything).

Revocation reaches every gateway replica without a restart: each one reads a key's record
from the store when it has not read it for `CACHE_S` (2 s), so a revoked key stops
working everywhere within 2 s. Chosen over watching the bucket: a watch that silently
stalls (a NATS reconnect, a consumer lost on a node failure) would keep a revoked key
alive with nothing to notice it, whereas a read that fails makes the request fail (503,
closed). One KV read per key every 2 s per gateway is negligible load.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict
from typing import get_args

import msgspec
from nats.js.errors import BucketNotFoundError, NoKeysError

from proto.records import API_KEYS_BUCKET, ApiKeyRecord, ApiScope
from voxline.bus import Bus, RevisionMismatch
from voxline.telemetry import now_us

log = logging.getLogger("voxline.gateway.api_keys")

KEY_PREFIX = "vxk_"
SCOPES: tuple[ApiScope, ...] = get_args(ApiScope)
_RANK: dict[str, int] = {"read": 0, "calls": 1, "admin": 2}
_ID = re.compile(r"^[0-9a-f]{12}$")
_KEY = re.compile(r"^vxk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
MAX_NAME = 64
CACHE_S = 2.0  # longest a gateway trusts what it read of a key (revocation delay)
CACHED_KEYS = 10_000  # records (and unknown ids) remembered at most
BOOTSTRAP_ID = "bootstrap"  # the principal of VOXLINE_API_KEY


class KeyStoreUnavailable(Exception):
    """The store could not be read: a key cannot be checked (the request is refused)."""


class InvalidKeyRequest(ValueError):
    """A create or revoke the store refuses (bad name, scope or id), said plainly."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(token: str) -> str | None:
    """The id inside a well-formed key, else None (nothing to look up)."""
    match = _KEY.match(token)
    return match.group(1) if match else None


def key_matches(record: ApiKeyRecord, token: str) -> bool:
    return hmac.compare_digest(record.key_hash, hash_key(token))


def same_secret(given: str, expected: str) -> bool:
    """Constant time whatever the lengths: both sides are hashed first."""
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest())


def required_scope(method: str, path: str) -> ApiScope:
    """The least scope a request needs: reading is `read`, placing a call is `calls`,
    anything else (present or future writes) is `admin`."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    if method == "POST" and path.rstrip("/") == "/v1/calls":
        return "calls"
    return "admin"


def allows(scopes: list[ApiScope], needed: ApiScope) -> bool:
    return any(_RANK[s] >= _RANK[needed] for s in scopes if s in _RANK)


class TokenBucket:
    """`per_min` requests a minute, with bursts up to a minute's worth."""

    def __init__(self, per_min: int, now: float) -> None:
        self.capacity = float(per_min)
        self.rate = per_min / 60.0  # tokens per second
        self.tokens = self.capacity
        self.last = now

    def take(self, now: float) -> float:
        """0 when the request may go; else the seconds until it could."""
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One bucket per key, on this gateway. Per replica on purpose: a shared counter
    would cost a KV write per request; with N gateways behind a load balancer a key gets
    up to N times the limit, which still bounds it. Only authenticated keys get a
    bucket, so the memory is bounded by the keys that exist."""

    def __init__(self, per_min: int) -> None:
        self.per_min = per_min
        self._buckets: dict[str, TokenBucket] = {}

    def wait_s(self, principal: str, now: float | None = None) -> float:
        if self.per_min <= 0:
            return 0.0
        at = time.monotonic() if now is None else now
        bucket = self._buckets.get(principal)
        if bucket is None:
            bucket = self._buckets[principal] = TokenBucket(self.per_min, at)
        return bucket.take(at)


class ApiKeyStore:
    """The bucket itself: what `voxline keys` writes and the gateways read."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def create(self, name: str, scope: str) -> tuple[ApiKeyRecord, str]:
        """A new key: its record and the key, which exists nowhere else from here on."""
        name = name.strip()
        if not name or len(name) > MAX_NAME or not name.isprintable():
            raise InvalidKeyRequest(f"a key's name is 1 to {MAX_NAME} printable characters")
        if scope not in SCOPES:
            raise InvalidKeyRequest(f"unknown scope {scope[:20]!r}: one of {', '.join(SCOPES)}")
        await self.bus.create_bucket(API_KEYS_BUCKET, ttl_s=0)  # 0: keys never expire
        while True:
            kid = secrets.token_hex(6)
            key = f"{KEY_PREFIX}{kid}_{secrets.token_urlsafe(32)}"
            record = ApiKeyRecord(id=kid, name=name, scopes=[scope], key_hash=hash_key(key), created_at_us=now_us())
            try:
                await self.bus.kv_create(API_KEYS_BUCKET, kid, record)
            except RevisionMismatch:
                continue  # that id is taken (1 in 2^48 per key): draw another
            return record, key

    async def get(self, kid: str) -> ApiKeyRecord | None:
        if not _ID.match(kid):
            return None
        try:
            return await self.bus.kv_get(API_KEYS_BUCKET, kid, ApiKeyRecord)
        except msgspec.ValidationError as exc:
            log.error("API key %s's record does not match the contract: %s", kid, exc)
            return None

    async def all(self) -> list[ApiKeyRecord]:
        try:
            kv = await self.bus.nc.jetstream().key_value(API_KEYS_BUCKET)
            ids = await kv.keys()
        except (BucketNotFoundError, NoKeysError):
            return []
        records = [await self.get(kid) for kid in ids]
        return sorted((r for r in records if r is not None), key=lambda r: r.created_at_us)

    async def revoke(self, kid: str) -> ApiKeyRecord:
        record = await self.get(kid)
        if record is None:
            raise InvalidKeyRequest(f"no API key with id {kid[:20]!r}")
        if not record.revoked:
            record.revoked = True
            await self.bus.kv_put(API_KEYS_BUCKET, kid, record)
        return record

    async def count(self) -> int:
        """Keys ever made, revoked ones included (revoking every key must not open the API)."""
        try:
            kv = await self.bus.nc.jetstream().key_value(API_KEYS_BUCKET)
        except BucketNotFoundError:
            return 0
        return int((await kv.status()).values)

    async def empty(self) -> bool:
        return await self.count() == 0


class KeyView:
    """A gateway's view of the store: each record re-read after `CACHE_S`, an unknown id
    too (so a key made a moment ago works within seconds). A read that fails raises
    KeyStoreUnavailable: a key that cannot be checked is not accepted."""

    def __init__(self, store: ApiKeyStore, cache_s: float = CACHE_S) -> None:
        self.store = store
        self.cache_s = cache_s
        self._records: OrderedDict[str, tuple[float, ApiKeyRecord | None]] = OrderedDict()
        self._empty: tuple[float, bool] | None = None

    async def record(self, kid: str) -> ApiKeyRecord | None:
        now = time.monotonic()
        cached = self._records.get(kid)
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        try:
            record = await self.store.get(kid)
        except Exception as exc:
            raise KeyStoreUnavailable(f"API key store unreadable: {type(exc).__name__}") from exc
        self._records[kid] = (now, record)
        self._records.move_to_end(kid)
        while len(self._records) > CACHED_KEYS:
            self._records.popitem(last=False)
        return record

    async def empty(self) -> bool:
        now = time.monotonic()
        if self._empty is not None and now - self._empty[0] < self.cache_s:
            return self._empty[1]
        try:
            empty = await self.store.empty()
        except Exception as exc:
            raise KeyStoreUnavailable(f"API key store unreadable: {type(exc).__name__}") from exc
        self._empty = (now, empty)
        return empty

    async def authenticate(self, token: str) -> ApiKeyRecord | None:
        """The live record of this key, or None (malformed, unknown, wrong secret, revoked)."""
        kid = key_id(token)
        if kid is None:
            return None
        record = await self.record(kid)
        if record is None or not key_matches(record, token) or record.revoked:
            return None
        return record
