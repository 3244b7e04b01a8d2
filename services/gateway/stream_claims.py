"""A call has one media stream: the one whose stream token was issued last.

Twilio opens a second stream for a call only when our `<Connect action>` hands out a new
one (a resume after a break: its token is newer). Anything else with an older token is a
stale socket or an attacker who got hold of a token: it is refused. The claim lives in
JetStream KV (`voxline_call_streams`), so it holds across gateways, and is taken by
compare-and-set, so two streams racing for one call cannot both win.
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
from nats.js.errors import BucketNotFoundError, NoStreamResponseError

from proto.records import CALL_STREAMS_BUCKET, StreamClaim
from services.gateway.stream_token import STORE_RETRY_S
from voxline.bus import Bus, RevisionMismatch

log = logging.getLogger("voxline.gateway.claims")

CLAIMS_TTL_S = 24 * 3600.0  # beyond any call's maximum length
# Each lost compare-and-set means another stream of the call wrote: a call has two or three
# at most, so this bound is only reached by a runaway.
CAS_ATTEMPTS = 50


class StreamOutdated(Exception):
    """A newer stream holds the call: this one must not serve it."""


class StreamClaims:
    def __init__(self, bus: Bus, gateway_id: str) -> None:
        self.bus = bus
        self.gateway_id = gateway_id

    async def claim(self, call_sid: str, stream_sid: str, issued_us: int) -> str:
        """Make this stream the call's stream; return the stream it replaced ('' when the
        call had none). Raise StreamOutdated when the call's stream has a newer token."""
        mine = StreamClaim(stream_sid=stream_sid, issued_us=issued_us, gateway_id=self.gateway_id)
        for _ in range(CAS_ATTEMPTS):
            current = await self.bus.kv_entry(CALL_STREAMS_BUCKET, call_sid, StreamClaim)
            try:
                if current is None:
                    await self._create(call_sid, mine)
                    return ""
                held, revision = current
                if held.stream_sid == stream_sid:
                    return ""
                if held.issued_us >= issued_us:
                    raise StreamOutdated(f"the call's stream {held.stream_sid} has a newer stream token")
                await self.bus.kv_update(CALL_STREAMS_BUCKET, call_sid, mine, revision)
                return held.stream_sid
            except RevisionMismatch:
                continue  # another stream of the call moved the claim meanwhile: look again
            except (NoStreamResponseError, nats.errors.TimeoutError):
                await asyncio.sleep(STORE_RETRY_S)  # the bucket's stream is electing a leader
        raise StreamOutdated("the call's stream kept changing while this one tried to take it")

    async def _create(self, call_sid: str, claim: StreamClaim) -> None:
        try:
            await self.bus.kv_create(CALL_STREAMS_BUCKET, call_sid, claim)
        except BucketNotFoundError:
            await self.prepare()
            await self.bus.kv_create(CALL_STREAMS_BUCKET, call_sid, claim)

    async def prepare(self) -> None:
        """Create the bucket (idempotent), at the gateway's start."""
        await self.bus.create_bucket(CALL_STREAMS_BUCKET, ttl_s=CLAIMS_TTL_S)
