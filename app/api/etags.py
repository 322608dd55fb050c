"""Entity tags: a strong validator of a body's bytes, and If-None-Match's comparison."""

from __future__ import annotations

import hashlib


def of(body: bytes) -> str:
    """A strong ETag of `body`: a hash of its bytes, quoted."""
    return f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match compares weakly (RFC 9110 13.1.2): W/"x" matches "x"."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags
