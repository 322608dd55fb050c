"""API keys: made, listed and revoked with `menagerie keys`, looked up by the API on every
request, each with a token bucket shared by every server process. One function per query in
sql/keys.sql.

A key is `mng_` and 32 random bytes (URL-safe base64), shown once when it is made. Only its
HMAC-SHA256 under a server secret is stored. A slow password hash (argon2, bcrypt) protects
guessable secrets; a key has 256 random bits, so nothing can be guessed, and a fast keyed hash
lets every request be matched by one index lookup of its hash, with no secret compared in
Python. The HMAC key (server_secrets 'key_hash') means that a copy of the keys table alone
cannot even confirm a leaked key.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

import asyncpg

from app import db
from app.sql import queries

PREFIX = "mng_"
KEY_BYTES = 32
SHOWN = 12
"""Characters of a key that `keys list` and the logs show (mng_ and 8 more)."""
_SHAPE = re.compile(r"^mng_[A-Za-z0-9_-]{43}$")

KEY_HASH_SECRET = "key_hash"
IMAGE_URL_SECRET = "image_url"
STREAM_TOKEN_SECRET = "stream_token"


class KeyExists(Exception):
    """A live key already has this name."""


class NoSuchKey(Exception):
    """No live key has this name."""


@dataclass(frozen=True, slots=True)
class Key:
    """A live key as the API sees it."""

    id: int
    name: str
    prefix: str
    admin: bool
    rate: float
    burst: int
    max_pending: int | None
    signs_webhooks: bool = False
    """It has a webhook secret, which signs its jobs' deliveries."""

    @property
    def viewer(self) -> int | None:
        """Whose jobs it sees: its own (its id), or every one (None) for an admin key."""
        return None if self.admin else self.id


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(KEY_BYTES)


def shown(token: str) -> str:
    """What may be shown of something sent as a key: its prefix if it has a key's shape,
    else nothing of it."""
    return token[:SHOWN] if _SHAPE.match(token) else "(not a key)"


class KeyedHash:
    """HMAC-SHA256 (RFC 2104) under one secret, with the secret's padded blocks hashed once:
    each message then costs two SHA-256 compressions and no key setup (a third of
    `hmac.digest`'s time, which matters once per request)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) > BLOCK:
            secret = hashlib.sha256(secret).digest()
        padded = secret.ljust(BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in padded))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in padded))

    def __call__(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


BLOCK = 64
"""SHA-256's block size in bytes."""


def key_hash(secret: bytes | KeyedHash, token: str) -> bytes:
    """The stored hash of `token`: its HMAC-SHA256 under the server secret key_hash."""
    keyed = secret if isinstance(secret, KeyedHash) else KeyedHash(secret)
    return keyed(token.encode("utf-8", "surrogateescape"))


@db.translated
async def server_secret(conn: db.Executor, name: str) -> bytes:
    """The shared secret `name`, made (32 random bytes) by the first process that asks."""
    while True:
        value: bytes | None = await conn.fetchval(queries.secret_get_or_create, name, secrets.token_bytes(32))
        if value is not None:
            return value


@db.translated
async def create(
    conn: db.Executor,
    *,
    name: str,
    admin: bool,
    rate: float,
    burst: int,
    max_pending: int | None,
    webhook_secret: bytes | None = None,
) -> tuple[str, Key]:
    """Make a key; return it (shown once, never stored) and its record. KeyExists when a live
    key has this name. `webhook_secret` (new_webhook_secret's bytes) signs its jobs' webhooks."""
    token = new_key()
    digest = key_hash(await server_secret(conn, KEY_HASH_SECRET), token)
    try:
        key_id: int = await conn.fetchval(
            queries.key_create, name, token[:SHOWN], digest, admin, rate, burst, max_pending, webhook_secret
        )
    except asyncpg.UniqueViolationError:
        raise KeyExists(name) from None
    return token, Key(
        key_id, name, token[:SHOWN], admin, rate, burst, max_pending, webhook_secret is not None
    )


def new_webhook_secret() -> tuple[str, bytes]:
    """A webhook secret: `whsec_` and the base64 of 32 random bytes (to show), and the bytes
    (the HMAC key, to store)."""
    raw = secrets.token_bytes(32)
    return "whsec_" + base64.b64encode(raw).decode(), raw


@db.translated
async def rotate_webhook_secret(conn: db.Executor, *, name: str, secret: bytes, overlap: float) -> None:
    """Give the live key `name` the webhook secret `secret`; its old one keeps signing for
    `overlap` seconds. NoSuchKey when there is no such key."""
    if await conn.fetchval(queries.key_webhook_secret_rotate, name, secret, overlap) is None:
        raise NoSuchKey(name)


@db.translated
async def list_all(conn: db.Executor) -> list[asyncpg.Record]:
    """Every key (name, prefix, admin, limits, created, last used, revoked), live ones first."""
    rows: list[asyncpg.Record] = await conn.fetch(queries.key_list)
    return rows


@db.translated
async def revoke(conn: db.Executor, *, name: str) -> str:
    """Revoke the live key `name`; its prefix. NoSuchKey when there is none."""
    prefix: str | None = await conn.fetchval(queries.key_revoke, name)
    if prefix is None:
        raise NoSuchKey(name)
    return prefix


@db.translated
async def authenticate(conn: db.Executor, *, digest: bytes) -> Key | None:
    """The live key whose hash is `digest` (noting its use), None if unknown or revoked."""
    row = await conn.fetchrow(queries.key_authenticate, digest)
    return None if row is None else _key(row)


@db.translated
async def live(conn: db.Executor, *, key_id: int) -> Key | None:
    """The live key with this id, None if unknown or revoked."""
    row = await conn.fetchrow(queries.key_live, key_id)
    return None if row is None else _key(row)


def _key(row: Any) -> Key:
    return Key(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        admin=row["admin"],
        rate=row["rate"],
        burst=row["burst"],
        max_pending=row["max_pending"],
        signs_webhooks=row["signs_webhooks"],
    )


@db.translated
async def take_tokens(conn: db.Executor, *, key_id: int, wanted: int) -> tuple[int, float]:
    """Take up to `wanted` tokens from the key's shared bucket: (taken, tokens left)."""
    row = await conn.fetchrow(queries.key_take_tokens, key_id, wanted)
    if row is None:  # no bucket: emptied by a crash
        await conn.execute(queries.key_bucket_restore, key_id)
        row = await conn.fetchrow(queries.key_take_tokens, key_id, wanted)
        if row is None:
            return 0, 0.0
    return row["granted"], row["remaining"]


@db.translated
async def pending_count(conn: db.Executor, *, key_id: int, cap: int) -> int:
    """The key's generations waiting to be claimed, counted no further than `cap`."""
    count: int = await conn.fetchval(queries.key_pending_count, key_id, cap)
    return count
