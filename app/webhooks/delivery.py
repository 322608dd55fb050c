"""The `webhook` kind: deliver one change of a job to the URL its webhook names.

A delivery's args say which job, which event, its sequence number and the job's version after
the change; the job is rendered as it was then, with absolute URLs, at each attempt. One
attempt is one signed POST through the process's one pooled client, cut after WEBHOOK_TIMEOUT,
no redirect followed, at most 64 KiB of the answer read. A 2xx is delivered; a 410 Gone stops
that delivery for good; anything else (another status, a timeout, a connection error) is
retried on WEBHOOK_RETRY_SCHEDULE until its attempts are used up (after the Retry-After of a
429 or 503 instead, at most the schedule's longest delay). An address that is not public
fails it at once (app/webhooks/guard.py). Every attempt is recorded in webhook_attempts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import httpcore
import httpx
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from app import db
from app.queue.kinds import Fail, Job, Kind, Outcome, Retry
from app.queue.metrics import FastHistogram
from app.sql import queries
from app.webhooks import signing
from app.webhooks.guard import GuardedBackend, Refused, Resolver, resolve

log = logging.getLogger(__name__)

KIND = "webhook"
MAX_RESPONSE_BYTES = 64 * 1024
"""The most of a receiver's answer read; the rest is left unread (the connection is closed)."""
USER_AGENT = "menagerie-webhooks"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

Render = Callable[[db.Executor, UUID, int], Awaitable[bytes | None]]
"""The JSON of job `id` as it was right after its change number `version`; None if unknown."""


class WebhookMetrics(Collector):
    """Deliveries by outcome, their latency, their retries; served beside the worker's own."""

    def __init__(self) -> None:
        self._registry = CollectorRegistry()
        self.attempts = Counter(
            "menagerie_webhook_attempts",
            "Delivery attempts by outcome: delivered, retrying, gone (410), refused (address), failed (gave up)",
            ["outcome"],
            registry=self._registry,
        )
        self.retries = Counter(
            "menagerie_webhook_retries",
            "Delivery attempts that were retries of an earlier one",
            registry=self._registry,
        )
        self.latency = FastHistogram(
            "menagerie_webhook_latency_seconds",
            "From sending a delivery to the receiver's status (or the failure)",
            buckets=LATENCY_BUCKETS,
            registry=self._registry,
        )

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one attempt went."""

    outcome: str
    """delivered, retrying, gone, refused or failed (attempts used up)."""
    status_code: int | None
    error: str | None
    latency: float
    retry_after: float | None = None
    """Seconds the receiver asked to wait (Retry-After on a 429 or 503), capped."""


def client(
    backend: GuardedBackend, *, timeout: float, ssl_context: ssl.SSLContext | None = None
) -> httpx.AsyncClient:
    """The one pooled client of a process's deliveries: connections through `backend` (which
    resolves and checks every host), no redirects, no proxies from the environment (a proxy
    would reach what the guard refuses), the timeout on each step as well as on the whole.
    Certificates are checked against the system's CAs (`ssl_context`: others, for tests)."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    # httpx takes no network backend; its transport's pool is httpcore's, which does.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context or httpx.create_ssl_context(trust_env=False),
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=backend,
    )
    return httpx.AsyncClient(
        transport=transport, trust_env=False, follow_redirects=False, timeout=httpx.Timeout(timeout)
    )


class Deliveries:
    """The `webhook` kind and what it needs: the pool, the client, how to render a job, and
    `keys`, which sign deliveries of jobs whose API key has no webhook secret (WEBHOOK_SECRET).
    Build one per worker process; `close()` when the process stops."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        render: Render,
        keys: Sequence[bytes] = (),
        timeout: float = 10.0,
        allow_private: bool = False,
        resolver: Resolver = resolve,
        connector: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_retry_after: float = 6 * 3600.0,
    ) -> None:
        self._pool = pool
        self._max_retry_after = max_retry_after
        self._render = render
        self._keys = tuple(keys)
        self._timeout = timeout
        self._client = client(
            GuardedBackend(allow_private=allow_private, resolver=resolver, connector=connector),
            timeout=timeout,
            ssl_context=ssl_context,
        )
        self.metrics = WebhookMetrics()

    def kind(self) -> Kind:
        """The kind, with its defaults (16 slots; the schedule and attempts come from the
        settings at the entry point)."""
        return Kind(name=KIND, handler=self.deliver, slots=16, timeout=self._timeout + 5.0, max_attempts=6)

    async def close(self) -> None:
        await self._client.aclose()

    async def deliver(self, job: Job) -> Outcome | None:
        args: dict[str, Any] = job.args
        target = UUID(args["job"])
        found = await self._pool.fetchrow(queries.webhook_target, target)
        rendered = None if found is None else await self._render(self._pool, target, args["version"])
        if found is None or rendered is None:
            return Fail("the job this delivery reports on no longer exists")
        url: str = found["url"]
        # The job's key's secrets (both while one is rotated), else WEBHOOK_SECRET.
        keys = [secret for secret in (found["secret"], found["old_secret"]) if secret] or self._keys
        if not keys:
            return Retry("no secret signs this delivery: set WEBHOOK_SECRET on the workers")
        body = json.dumps({"event": args["event"], "sequence": args["sequence"]}).encode()[:-1]
        body += b"," + rendered[1:]
        at = datetime.now(UTC)
        attempt = await self.post(url, body, keys=keys, message_id=f"msg_{job.id.hex}")
        if attempt.outcome == "retrying" and job.attempts >= job.max_attempts:
            attempt = dataclasses.replace(attempt, outcome="failed")
        await self._pool.execute(
            queries.webhook_attempt_record,
            target,
            job.id,
            args["event"],
            args["sequence"],
            job.attempts,
            at,
            attempt.outcome,
            attempt.status_code,
            attempt.error,
            attempt.latency * 1000.0,
        )
        self.metrics.attempts.labels(attempt.outcome).inc()
        self.metrics.latency.observe(attempt.latency)
        if job.attempts > 1:
            self.metrics.retries.inc()
        log.info(
            "webhook %s of job %s: %s",
            args["event"],
            target,
            attempt.error or attempt.outcome,
            extra={"action": f"webhook_{attempt.outcome}", "job_id": str(target)},
        )
        if attempt.outcome == "delivered":
            return None
        reason = attempt.error or attempt.outcome
        if attempt.outcome in ("retrying", "failed"):
            return Retry(reason, after=attempt.retry_after)
        return Fail(reason)

    async def post(self, url: str, body: bytes, *, keys: Sequence[bytes], message_id: str) -> Attempt:
        """One POST of `body` to `url`, signed with each of `keys`, classified."""
        timestamp = int(time.time())
        headers = {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signing.signature(
                keys, message_id=message_id, timestamp=timestamp, body=body
            ),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                async with self._client.stream("POST", url, content=body, headers=headers) as response:
                    status = response.status_code
                    await read_capped(response, MAX_RESPONSE_BYTES)
        except Refused as exc:
            return Attempt("refused", None, str(exc), time.perf_counter() - started)
        except TimeoutError:
            return Attempt(
                "retrying", None, f"no answer within {self._timeout:g} s", time.perf_counter() - started
            )
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return Attempt("retrying", None, error, time.perf_counter() - started)
        latency = time.perf_counter() - started
        if 200 <= status < 300:
            return Attempt("delivered", status, None, latency)
        if status == 410:
            return Attempt("gone", status, "the receiver answered 410 Gone: not retried", latency)
        wait = retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
        if wait is None:
            return Attempt("retrying", status, f"the receiver answered {status}", latency)
        wait = min(wait, self._max_retry_after)
        return Attempt(
            "retrying", status, f"the receiver answered {status}, Retry-After {wait:g} s", latency, wait
        )


def retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (delay-seconds or an HTTP date); None if absent or
    unreadable."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


async def read_capped(response: httpx.Response, limit: int) -> None:
    """Read at most `limit` bytes of the answer (a small one leaves the connection reusable)."""
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read >= limit:
            return


@db.translated
async def attempts(conn: db.Executor, *, job_id: UUID) -> list[asyncpg.Record]:
    """Every attempt to deliver the job's webhooks, oldest first."""
    return await conn.fetch(queries.webhook_attempt_list, job_id)
