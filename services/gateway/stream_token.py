"""Short-lived, single-use tokens that tie a media stream to the webhook that created it.

The TwiML hands Twilio a token as a `<Parameter>`; Twilio sends it back in the stream's
`start` event. Without it anyone who finds the WebSocket URL could open a call on our
providers' bill. JWT (PyJWT, already a dependency of `twilio`) does the signing.

A token is bound to one CallSid, one agent and one Twilio account, and opens one stream:
its `jti` is spent in JetStream KV (`voxline_stream_tokens`) the first time, on whichever
gateway, so a token copied from a log or a proxy cannot open a second stream. `iat_us`
orders the tokens of a call: the stream with the newest token is the call's stream.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import NamedTuple

import jwt
import nats.errors
from nats.js.errors import BucketNotFoundError, NoStreamResponseError

from proto.records import STREAM_TOKENS_BUCKET, SpentStreamToken
from voxline.bus import Bus, RevisionMismatch
from voxline.telemetry import now_us

STORE_ATTEMPTS = 12  # times STORE_RETRY_S: within the stream's start timeout
STORE_RETRY_S = 0.25


class InvalidStreamToken(Exception):
    pass


class StreamGrant(NamedTuple):
    """What a valid token says about the stream it opens."""

    jti: str
    issued_us: int  # orders a call's tokens: the newest stream wins


class StreamTokens:
    def __init__(self, secret: str, ttl_s: int, bus: Bus | None = None) -> None:
        self._secret = secret or secrets.token_hex(32)
        self._ttl_s = ttl_s
        self._bus = bus  # where spent tokens are remembered; None: tokens are not single-use (unit tests)

    def issue(self, call_sid: str, agent_id: str, account_sid: str = "") -> str:
        claims = {
            "sub": call_sid,
            "agent": agent_id,
            "acct": account_sid,
            "jti": secrets.token_urlsafe(16),
            "iat_us": now_us(),
            "exp": int(time.time()) + self._ttl_s,
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def check(self, token: str, call_sid: str, agent_id: str, account_sid: str = "") -> StreamGrant:
        """The token's grant if it was issued by us, for this call, agent and account, and
        has not expired; raise InvalidStreamToken otherwise. Does not spend it."""
        if not token:
            raise InvalidStreamToken("no stream token")
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=["HS256"], options={"require": ["exp", "sub", "jti", "iat_us"]}
            )
        except jwt.PyJWTError as exc:
            raise InvalidStreamToken(f"stream token rejected: {exc}") from None
        if claims.get("sub") != call_sid or claims.get("agent") != agent_id:
            raise InvalidStreamToken("stream token was issued for another call or agent")
        if claims.get("acct", "") != account_sid:
            raise InvalidStreamToken("stream token was issued for another Twilio account")
        jti, issued_us = claims["jti"], claims["iat_us"]
        if not isinstance(jti, str) or not jti or not isinstance(issued_us, int):
            raise InvalidStreamToken("stream token has a malformed jti or iat_us")
        return StreamGrant(jti, issued_us)

    async def spend(self, grant: StreamGrant, call_sid: str) -> None:
        """Mark the token used, on every gateway at once (a KV create succeeds once per key).
        Fails closed: when the store cannot be reached the stream is refused, since the
        call could not be started over a bus that is down anyway."""
        if self._bus is None:
            return
        spent = SpentStreamToken(call_id=call_sid, at_us=now_us())
        for attempt in range(STORE_ATTEMPTS):
            try:
                try:
                    await self._bus.kv_create(STREAM_TOKENS_BUCKET, grant.jti, spent)
                except BucketNotFoundError:
                    await self.prepare()
                    await self._bus.kv_create(STREAM_TOKENS_BUCKET, grant.jti, spent)
                return
            except RevisionMismatch:
                raise InvalidStreamToken("stream token was already used (a replay)") from None
            except (NoStreamResponseError, nats.errors.TimeoutError) as exc:
                # The bucket's stream has no leader for a moment (just created on a cluster,
                # or a node died): a new leader is elected within seconds.
                if attempt == STORE_ATTEMPTS - 1:
                    raise InvalidStreamToken(f"cannot check that the stream token is unused: {exc!r}") from None
                await asyncio.sleep(STORE_RETRY_S)
            except Exception as exc:
                raise InvalidStreamToken(f"cannot check that the stream token is unused: {exc!r}") from None

    async def prepare(self) -> None:
        """Create the spent-token bucket (idempotent): at the gateway's start, so the first
        call does not wait for a new replicated stream to elect its leader."""
        if self._bus is not None:
            # Kept past the token's own expiry: an expired token is refused by its `exp`.
            await self._bus.create_bucket(STREAM_TOKENS_BUCKET, ttl_s=self._ttl_s + 60)

    async def verify(self, token: str, call_sid: str, agent_id: str, account_sid: str = "") -> StreamGrant:
        """Check the token and spend it: raise InvalidStreamToken unless it is valid and unused."""
        grant = self.check(token, call_sid, agent_id, account_sid)
        await self.spend(grant, call_sid)
        return grant
