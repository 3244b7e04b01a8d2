"""Short-lived tokens that tie a media stream to the webhook that created it.

The TwiML hands Twilio a token as a `<Parameter>`; Twilio sends it back in the stream's
`start` event. Without it anyone who finds the WebSocket URL could open a call on our
providers' bill. JWT (PyJWT, already a dependency of `twilio`) does the signing.
"""

from __future__ import annotations

import secrets
import time

import jwt


class InvalidStreamToken(Exception):
    pass


class StreamTokens:
    def __init__(self, secret: str, ttl_s: int) -> None:
        self._secret = secret or secrets.token_hex(32)
        self._ttl_s = ttl_s

    def issue(self, call_sid: str, agent_id: str) -> str:
        claims = {"sub": call_sid, "agent": agent_id, "exp": int(time.time()) + self._ttl_s}
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str, call_sid: str, agent_id: str) -> None:
        """Raise InvalidStreamToken unless the token was issued for this call and agent."""
        if not token:
            raise InvalidStreamToken("no stream token")
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], options={"require": ["exp", "sub"]})
        except jwt.PyJWTError as exc:
            raise InvalidStreamToken(f"stream token rejected: {exc}") from None
        if claims.get("sub") != call_sid or claims.get("agent") != agent_id:
            raise InvalidStreamToken("stream token was issued for another call or agent")
