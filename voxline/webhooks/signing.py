"""Signing of webhook deliveries, the Stripe scheme: `Voxline-Signature: t=<unix seconds>,
v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>`. The timestamp is inside the MAC so a
receiver can refuse a replayed delivery older than its tolerance, and the body is signed as
sent (bytes), so a receiver verifies before it parses.

Also where an agent's webhook settings are checked (the agent file imports this module, so
it stays free of other imports): a URL must be https, or http to this machine (or anywhere
with VOXLINE_INSECURE_DEV=1), so a call's transcript never crosses a network in clear; the
secret is named by an environment variable, never written into an agent file, and only a
variable named VOXLINE_WEBHOOK_SECRET or VOXLINE_WEBHOOK_SECRET_<NAME> may be named: an
agent (soon editable through the API) must not be able to make the orchestrator use the
NATS password or a provider key as a MAC key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from ipaddress import ip_address
from urllib.parse import urlsplit

SIGNATURE_HEADER = "Voxline-Signature"
EVENT_ID_HEADER = "Voxline-Event-Id"
SECRET_ENV = re.compile(r"^VOXLINE_WEBHOOK_SECRET(_[A-Z0-9_]{1,64})?$")
DEFAULT_TOLERANCE_S = 300


def signature(secret: str, body: bytes, at: int | None = None) -> str:
    """The `Voxline-Signature` header value of `body` signed at `at` (unix seconds)."""
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(
    secret: str, body: bytes, header: str, tolerance_s: int = DEFAULT_TOLERANCE_S, now: int | None = None
) -> bool:
    """What a receiver does (the README has the same in six lines): the MAC over the
    timestamp and the raw body, compared in constant time, and a timestamp not too old."""
    try:
        parts = dict(part.split("=", 1) for part in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    fresh = abs((int(time.time()) if now is None else now) - t) <= tolerance_s
    return fresh and hmac.compare_digest(expected, parts.get("v1", ""))


def insecure_dev() -> bool:
    return os.environ.get("VOXLINE_INSECURE_DEV", "").strip().lower() in ("1", "true", "yes", "on")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def url_problem(url: str) -> str:
    """Why `url` may not receive an agent's webhooks ("" when it may)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme not in ("https", "http") or not host:
        return "must be an https:// URL"
    if parts.username or parts.password:
        return "must not carry credentials (sign with webhook_secret_env instead)"
    if parts.scheme == "http" and not _loopback(host) and not insecure_dev():
        return "must be https:// (http:// only to 127.0.0.1/localhost, or with VOXLINE_INSECURE_DEV=1)"
    return ""


def settings_problem(url: str, secret_env: str) -> str:
    """Why an agent's `webhook_url` and `webhook_secret_env` are invalid, naming the field."""
    if not url:
        return "webhook_secret_env is set without webhook_url" if secret_env else ""
    if problem := url_problem(url):
        return f"webhook_url {url[:64]!r} {problem}"
    if not secret_env:
        return "webhook_url needs webhook_secret_env, the environment variable holding its signing secret"
    if not SECRET_ENV.fullmatch(secret_env):
        return (
            f"webhook_secret_env {secret_env[:64]!r} must name a variable VOXLINE_WEBHOOK_SECRET or "
            "VOXLINE_WEBHOOK_SECRET_<NAME> (A-Z, 0-9, _)"
        )
    return ""
