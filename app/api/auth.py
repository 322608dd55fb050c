"""API keys on requests (AUTH=keys): who is calling, how fast they may go, and the signed
image URLs that let a browser's <img> fetch images without a key.

Every request but the public ones (health, readiness, metrics, the OpenAPI document and its
docs page) must send `Authorization: Bearer <key>`. A missing, malformed, unknown or revoked
key gets the same 401, by the same path: the key's HMAC is looked up, in this process's
cache for at most KEY_CACHE_SECONDS (so a revoked key stops working everywhere within that),
then in the database. A key's requests take tokens from its bucket, shared by every server
process through the database; see Limiter.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import logging
import math
import time
from dataclasses import dataclass

import asyncpg
from starlette.types import ASGIApp, Receive, Scope, Send

from app import db, keys
from app.api.headers import add_to_answer, header
from app.api.problems import Problem, problem_response
from app.keys import Key, KeyedHash

log = logging.getLogger(__name__)

KEY_CACHE_SECONDS = 4.0
"""How long a process trusts a key it looked up: a revoked key works at most this long."""
BATCH_SECONDS = 0.05
"""A process takes the tokens of this much of a key's rate from the shared bucket at once."""
HOLD_SECONDS = 3.0
"""Tokens a process took but did not use within this long are dropped (never used late)."""
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/"})
"""Besides these, /docs/… and /static/… (the docs page's and the dashboard's files): the
dashboard itself asks for a key, and keeps it in the tab."""
STREAM_PATH = "/generations/events"

KEY_ATTRIBUTE = "menagerie.key"
PRIVATE = ((b"cache-control", b"private"),)
"""A keyed answer is for its key alone: no shared cache keeps it (unless the endpoint says
otherwise, as images and event streams do)."""


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(("/docs/", "/static/"))


def caller(scope: Scope) -> Key | None:
    """The key of this request; None with AUTH=none, on public paths and for signed URLs."""
    key: Key | None = scope.get(KEY_ATTRIBUTE)
    return key


def viewer(scope: Scope) -> int | None:
    """Whose jobs this request may see: a key's own (its id), or all (None: an admin key, or
    AUTH=none). A signed image URL is checked by its signature instead."""
    key = caller(scope)
    return None if key is None else key.viewer


def unauthorized() -> Problem:
    """The one answer to a missing, malformed, unknown or revoked key."""
    return Problem(
        401,
        "send a valid API key: Authorization: Bearer mng_…",
        type="/problems/unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="menagerie"'},
    )


class Lazy:
    """A shared secret read (or made) in the database at its first use, not at start: the
    server starts while PostgreSQL is down. Kept as its HMAC-SHA256 (keys.KeyedHash)."""

    def __init__(self, pool: asyncpg.Pool, name: str, configured: bytes | None = None) -> None:
        self._pool = pool
        self._name = name
        self.value = None if configured is None else keys.KeyedHash(configured)
        self._lock = asyncio.Lock()

    async def get(self) -> keys.KeyedHash:
        """The secret (callers on a hot path read `value` first, and await this only while it
        is None)."""
        if self.value is None:
            async with self._lock:
                if self.value is None:
                    self.value = keys.KeyedHash(await keys.server_secret(self._pool, self._name))
        return self.value


class KeyCache:
    """Keys looked up by hash, trusted for KEY_CACHE_SECONDS from the moment their lookup
    began. A key in use is looked up again in the background once half that has passed, so
    that a busy key's requests never wait for the database; a revoked key drops out at that
    lookup."""

    MAX_ENTRIES = 10_000

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._secret = Lazy(pool, keys.KEY_HASH_SECRET)
        self._found: dict[bytes, tuple[Key, float]] = {}
        self._refreshing: dict[bytes, asyncio.Task[Key | None]] = {}

    async def find(self, token: str) -> Key | None:
        digest = keys.key_hash(self._secret.value or await self._secret.get(), token)
        hit = self._found.get(digest)
        if hit is not None:
            key, looked_up = hit
            age = time.monotonic() - looked_up
            if age < KEY_CACHE_SECONDS:
                if age > KEY_CACHE_SECONDS / 2 and digest not in self._refreshing:
                    self._refreshing[digest] = asyncio.create_task(self._refresh(digest))
                return key
        return await self._look_up(digest)

    async def _look_up(self, digest: bytes) -> Key | None:
        began = time.monotonic()
        key = await keys.authenticate(self._pool, digest=digest)
        if key is None:
            self._found.pop(digest, None)
            return None
        if len(self._found) >= self.MAX_ENTRIES:
            self._found.clear()
        self._found[digest] = (key, began)
        return key

    async def _refresh(self, digest: bytes) -> Key | None:
        try:
            return await self._look_up(digest)
        except db.Unavailable:
            return None  # the entry expires, and the next request looks it up itself
        finally:
            del self._refreshing[digest]


@dataclass
class Verdict:
    """Whether a request may go on, and the RateLimit headers that say so."""

    allowed: bool
    headers: list[tuple[bytes, bytes]]
    retry_after: int = 0


@dataclass
class Held:
    """Tokens this process took from one key's shared bucket and has not used yet, and what
    the key's limits make of them (worked out once per key, not per request)."""

    key: Key
    batch: int
    """Tokens taken from the shared bucket at once (Limiter)."""
    policy: bytes
    """The key's RateLimit-Policy header."""
    tokens: int = 0
    until: float = 0.0
    left: float = 0.0
    """Tokens left in the shared bucket at the last take."""
    denied_until: float = 0.0
    refill: asyncio.Task[None] | None = None


class Limiter:
    """Per-key token buckets, shared by every server process through key_buckets.

    A request uses a token this process holds for the key. Tokens are taken from the shared
    bucket in batches, in one UPDATE: the tokens of BATCH_SECONDS of the key's rate (at least
    one). The next batch is taken in the background once half of the current one is used, so
    a steady key's requests do not wait for the database; a request waits only when this
    process holds none. Tokens are only ever granted by the shared bucket, so all processes
    together never let a key through faster than its rate plus its burst; a process drops the
    tokens it has not used within HOLD_SECONDS. The price of batching: a key spread over many
    processes may be refused while another process still holds a few of its tokens. A refused
    key is refused locally until its bucket has a token again, without asking the database."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._held: dict[int, Held] = {}

    async def take(self, key: Key) -> Verdict:
        held = self._held.get(key.id)
        if held is None or held.key is not key:  # new, or looked up again (KeyCache)
            held = self._hold(key, held)
        now = time.monotonic()
        if held.until <= now:
            held.tokens = 0
        if held.tokens <= 0:
            if held.denied_until > now and held.refill is None:
                return self._verdict(key, held, allowed=False, now=now)
            if held.refill is None:
                held.refill = self._start_refill(key, held)
            await asyncio.shield(held.refill)
            now = time.monotonic()
            if held.tokens <= 0:
                return self._verdict(key, held, allowed=False, now=now)
        held.tokens -= 1
        if held.tokens <= held.batch // 2 and held.refill is None:
            held.refill = self._start_refill(key, held)
        return self._verdict(key, held, allowed=True, now=now)

    def _hold(self, key: Key, held: Held | None) -> Held:
        batch = max(1, min(key.burst, math.ceil(key.rate * BATCH_SECONDS)))
        if held is None:
            held = self._held[key.id] = Held(key, batch, policy(key))
        else:
            held.key, held.batch, held.policy = key, batch, policy(key)
        return held

    def _start_refill(self, key: Key, held: Held) -> asyncio.Task[None]:
        task = asyncio.create_task(self._refill(key, held))
        # A refill in the background that fails (the database is down) is awaited by nobody:
        # the next request that needs a token takes another and gets the error itself.
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        return task

    async def _refill(self, key: Key, held: Held) -> None:
        try:
            granted, left = await keys.take_tokens(self._pool, key_id=key.id, wanted=held.batch)
            now = time.monotonic()
            if held.until <= now:
                held.tokens = 0
            held.tokens += granted
            held.left = left
            if granted:
                held.until = now + HOLD_SECONDS
            else:
                held.denied_until = now + (1.0 - left) / key.rate
        finally:
            held.refill = None

    @staticmethod
    def _verdict(key: Key, held: Held, *, allowed: bool, now: float) -> Verdict:
        remaining = max(0, held.tokens + math.floor(held.left))
        reset = math.ceil(max(0.0, key.burst - remaining) / key.rate)
        headers = [(b"ratelimit-policy", held.policy), (b"ratelimit", ratelimit(remaining, reset))]
        if allowed:
            return Verdict(True, headers)
        retry_after = max(1, math.ceil(held.denied_until - now))
        return Verdict(False, headers, retry_after)


@functools.lru_cache(maxsize=4096)
def ratelimit(remaining: int, reset: int) -> bytes:
    """RateLimit: `remaining` requests left, the bucket full again in `reset` seconds."""
    return f'"key";r={remaining};t={reset}'.encode()


def policy(key: Key) -> bytes:
    """RateLimit-Policy: the key's rate as q requests per w seconds (w=1 from 1/s up)."""
    window = 1 if key.rate >= 1 else math.ceil(1 / key.rate)
    return f'"key";q={max(1, round(key.rate * window))};w={window}'.encode()


class ImageSigner:
    """Signs image paths with an expiry, for browsers that cannot send a key. The expiry is
    rounded up to a multiple of half IMAGE_URL_TTL, so a job's JSON (and its ETag) stays the
    same between reads: a URL is valid for TTL to 1.5 TTL after it was written."""

    def __init__(self, secret: Lazy, ttl: float) -> None:
        self._secret = secret
        self._ttl = ttl
        self._last: Signing | None = None

    async def signer(self, now: float | None = None) -> Signing:
        """The Signing of URLs written now: the same one (and its signatures) for every
        request until the expiry moves on, half a TTL later."""
        half = self._ttl / 2
        moment = time.time() if now is None else now
        expires = int(math.ceil((moment + self._ttl) / half) * half)
        last = self._last
        if last is not None and last.expires == expires:
            return last
        signing = Signing(self._secret.value or await self._secret.get(), expires)
        if now is None:
            self._last = signing
        return signing

    async def valid(self, path: str, *, expires: str | None, signature: str | None) -> bool:
        """Whether `signature` signs `path` until `expires`, which is still to come."""
        if not expires or not signature or not expires.isdigit() or int(expires) <= time.time():
            return False
        wanted = _signature(await self._secret.get(), path, int(expires))
        return hmac.compare_digest(wanted, signature.encode("ascii", "replace"))


class Signing:
    """Signs paths until one expiry (the Signer that job_json takes). A job read again and
    again (clients poll) has its images' signatures made once."""

    MAX_KEPT = 10_000

    def __init__(self, secret: keys.KeyedHash, expires: int) -> None:
        self.secret = secret
        self.expires = expires
        self._made: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        made = self._made.get(path)
        if made is None:
            if len(self._made) >= self.MAX_KEPT:
                self._made.clear()
            signature = _signature(self.secret, path, self.expires).decode()
            made = self._made[path] = f"?expires={self.expires}&sig={signature}"
        return made


def _signature(secret: keys.KeyedHash, path: str, expires: int) -> bytes:
    digest = secret(f"{expires}:{path}".encode())[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=")


class StreamTokens:
    """Short-lived signed tokens that open GET /generations/events for one key.

    A browser's EventSource cannot send an Authorization header. A page asks for a token with
    its key (POST /generations/events/token) and opens the stream with `?token=`. A token
    names its key and an expiry, signed with a server secret: nothing is stored, and a leaked
    URL (proxy logs, history) is worthless after `ttl` seconds. A stream already open stays
    open; EventSource's own reconnection with an expired token gets a 401, after which the
    page asks for a fresh token. A cookie set by a login endpoint would make every endpoint
    answer to an ambient credential, and need CSRF defences the API has no use for."""

    def __init__(self, secret: Lazy, ttl: float) -> None:
        self._secret = secret
        self.ttl = ttl

    async def issue(self, key: Key, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.ttl)
        payload = f"{key.id}.{expires}"
        return f"{payload}.{_stream_signature(await self._secret.get(), payload).decode()}"

    async def key_id(self, token: str) -> int | None:
        """The id of the key a token was issued to, if it is genuine and has not expired."""
        key_id, _, rest = token.partition(".")
        expires, _, signature = rest.partition(".")
        if not (key_id.isdigit() and expires.isdigit() and len(key_id) <= 18 and len(expires) <= 12):
            return None
        if int(expires) <= time.time():
            return None
        wanted = _stream_signature(await self._secret.get(), f"{key_id}.{expires}")
        if not hmac.compare_digest(wanted, signature.encode("ascii", "replace")):
            return None
        return int(key_id)


def _stream_signature(secret: KeyedHash, payload: str) -> bytes:
    digest = secret(f"stream:{payload}".encode())[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=")


class Auth:
    """What AUTH=keys needs in one server process: the key cache, the limiter, the signers."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        image_url_ttl: float,
        image_url_secret: bytes | None,
        stream_token_ttl: float = 60.0,
    ) -> None:
        self.pool = pool
        self.keys = KeyCache(pool)
        self.limiter = Limiter(pool)
        self.images = ImageSigner(Lazy(pool, keys.IMAGE_URL_SECRET, image_url_secret), image_url_ttl)
        self.streams = StreamTokens(Lazy(pool, keys.STREAM_TOKEN_SECRET), stream_token_ttl)

    async def stream_key(self, token: str) -> Key | None:
        """The live key a stream token was issued to; None for a bad or expired token, or a
        key revoked since."""
        key_id = await self.streams.key_id(token)
        return None if key_id is None else await keys.live(self.pool, key_id=key_id)


def bearer(authorization: str | None) -> str:
    """The key in `Authorization: Bearer <key>`; "" when there is none (then no key matches)."""
    if authorization is None:
        return ""
    if authorization.startswith("Bearer ") and " " not in authorization[7:]:
        return authorization[7:]  # as every client writes it
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class AuthMiddleware:
    """Finds the key of every request that needs one (401 problem otherwise), takes a token
    from its bucket (429 when there is none), and marks its answers `Cache-Control: private`
    with the RateLimit headers. Nothing happens with AUTH=none (no Auth in the state)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        auth: Auth | None = scope["state"].get("auth") if scope["type"] == "http" else None
        if auth is None or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        authorization = header(scope, b"authorization")
        if (
            authorization is None
            and scope["path"].startswith("/images/")
            and b"sig=" in scope["query_string"]
        ):
            await self.app(scope, receive, send)  # a signed URL: the endpoint checks it
            return
        if authorization is None and scope["path"] == STREAM_PATH and b"token=" in scope["query_string"]:
            await self.app(scope, receive, send)  # a stream token: the endpoint checks it
            return
        token = bearer(authorization)
        try:
            key = await auth.keys.find(token)
            verdict = None if key is None else await auth.limiter.take(key)
        except db.Unavailable as exc:
            log.warning("database unavailable: %s", exc, extra={"action": "database_unavailable"})
            problem = Problem(
                503, "the database is unavailable; try again shortly", headers={"Retry-After": "1"}
            )
            await problem_response(problem)(scope, receive, send)
            return
        if key is None or verdict is None:
            log.info(
                "refused a request with a missing, unknown or revoked key",
                extra={"action": "key_refused", "key": keys.shown(token)},
            )
            await problem_response(unauthorized())(scope, receive, send)
            return
        if not verdict.allowed:
            problem = Problem(
                429,
                f"this key may make {key.rate:g} requests per second (bursts of {key.burst}); "
                f"retry in {verdict.retry_after} s",
                type="/problems/rate-limited",
                headers={"Retry-After": str(verdict.retry_after), "Cache-Control": "private"},
            )
            response = problem_response(problem)
            response.raw_headers.extend(verdict.headers)
            await response(scope, receive, send)
            return
        scope[KEY_ATTRIBUTE] = key
        add_to_answer(scope, verdict.headers, unless_set=PRIVATE)
        await self.app(scope, receive, send)
