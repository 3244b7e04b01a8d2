"""`ETag` and `If-Match` for versioned resources (agents): optimistic concurrency as HTTP
defines it (RFC 9110 §8.8.3 ETag, §13.1.1 If-Match), so two people editing one agent cannot
silently overwrite each other.

A resource's entity tag is its version, quoted (`"7"`): a strong tag, as the version
changes on every write. `If-Match` holds `*` (any current version) or a list of tags; the
version must be one of them, compared strongly, so a weak tag (`W/"7"`) never matches, as
the RFC says for If-Match. A bare number (`If-Match: 7`) is taken as `"7"`: it is what a
client reading `version` from the JSON body will send, and it can mean nothing else.
A precondition that fails is a 412 Precondition Failed (not 409: the request is fine, the
client's copy is old); the answer carries the current ETag, so the client can re-read and
retry."""

from __future__ import annotations

from collections.abc import Callable

MAX_IF_MATCH = 1024  # characters looked at; a longer header is a list nobody means


def etag(version: int) -> str:
    return f'"{version}"'


def if_match(header: str | None) -> Callable[[int], bool] | None:
    """What `If-Match` asks of the version: None when the request has no If-Match (no
    condition), else a test that is true for the versions it names."""
    if header is None:
        return None
    wanted: set[int] = set()
    for raw in header[:MAX_IF_MATCH].split(","):
        tag = raw.strip()
        if tag == "*":
            return lambda version: True
        if tag.startswith("W/"):  # weak: never matches in If-Match
            continue
        if len(tag) >= 2 and tag[0] == tag[-1] == '"':
            tag = tag[1:-1]
        if tag.isascii() and tag.isdigit() and len(tag) <= 19:
            wanted.add(int(tag))
    return lambda version: version in wanted
