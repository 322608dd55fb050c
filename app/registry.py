"""What a worker process is made of: every kind of job menagerie runs, configured from the
settings, and the maintenance rounds of the layers above the queue. The `menagerie worker`
command (worker.py, `menagerie run`) builds it here; the queue itself knows none of this."""

from __future__ import annotations

import ssl
from uuid import UUID

import asyncpg
import httpcore

from app import db, keys
from app.api import idempotency
from app.api.auth import ImageSigner, Lazy
from app.api.models import job_json
from app.images import generate, generations, s3
from app.images.providers.local import LocalProvider
from app.queue.kinds import Kind, Retry, configured
from app.queue.maintenance import Round
from app.queue.process import serve
from app.settings import Settings, webhook_key
from app.webhooks.delivery import Deliveries
from app.webhooks.guard import Resolver, resolve


def kinds(settings: Settings, pool: asyncpg.Pool, deliveries: Deliveries | None = None) -> list[Kind]:
    """Every registered kind, with its settings applied (`<KIND>_SLOTS`, ...): generations, and
    webhook deliveries when given `deliveries`."""
    provider = LocalProvider(delay=settings.image_provider_delay, size=settings.image_size)
    registered = [
        generate.kind(
            pool, provider, image_stores=s3.stores_for(settings), db_patience=settings.lease_seconds
        )
    ]
    if deliveries is not None:
        registered.append(deliveries.kind())
    return [configured(kind, settings.kind(kind.name)) for kind in registered]


def webhook_deliveries(
    settings: Settings,
    pool: asyncpg.Pool,
    *,
    resolver: Resolver = resolve,
    connector: httpcore.AsyncNetworkBackend | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Deliveries:
    """The `webhook` kind's state: signing with the job's key's webhook secret or
    WEBHOOK_SECRET, rendering generations with PUBLIC_BASE_URL's absolute URLs (image URLs
    signed afresh at each attempt with AUTH=keys). Tests pass their own `resolver`,
    `connector` and `ssl_context` (their CA)."""
    secret = settings.webhook_secret
    fallback = [] if secret is None else [webhook_key(secret.get_secret_value())]
    base = None if settings.public_base_url is None else str(settings.public_base_url).rstrip("/")
    configured = settings.image_url_secret
    images = ImageSigner(
        Lazy(
            pool,
            keys.IMAGE_URL_SECRET,
            None if configured is None else configured.get_secret_value().encode(),
        ),
        settings.image_url_ttl,
    )

    async def render(conn: db.Executor, job_id: UUID, version: int) -> bytes | None:
        if base is None:
            raise Retry("PUBLIC_BASE_URL is not set on this worker: a delivery's URLs need it")
        job = await generations.at_version(conn, job_id=job_id, version=version)
        if job is None:
            return None
        signer = await images.signer() if settings.auth == "keys" else None
        return job_json(job, base_url=base, signer=signer)

    return Deliveries(
        pool,
        render=render,
        keys=fallback,
        timeout=settings.webhook_timeout,
        allow_private=settings.webhook_allow_private,
        resolver=resolver,
        connector=connector,
        ssl_context=ssl_context,
        max_retry_after=max(settings.webhook_retry_delays),
    )


def rounds(settings: Settings, pool: asyncpg.Pool) -> list[Round]:
    """Maintenance rounds of the layers above the queue."""

    async def forget_expired_keys() -> None:
        await idempotency.forget_expired(pool, batch_size=settings.retention_batch_size)

    found = [Round("idempotency-keys", 600.0, forget_expired_keys)]
    bucket = s3.stores_for(settings).by_name.get(s3.NAME)
    if isinstance(bucket, s3.S3Store):
        s3_store = bucket

        async def delete_orphans() -> None:
            await s3.delete_orphans(pool, s3_store)

        found.append(Round("orphan-objects", 600.0, delete_orphans))
    return found


def pool_size(settings: Settings) -> int:
    """Connections a worker process may use: one per running generation (it stores its
    images), plus outcomes, heartbeat and maintenance, and a few for webhook deliveries (each
    holds one only to read the job and record the attempt)."""
    return settings.worker_concurrency + 8


async def serve_worker(settings: Settings) -> None:
    """Run one worker process: every registered kind (or those WORKER_KINDS names) and every
    layer's maintenance rounds, until SIGTERM or SIGINT."""
    pool = await db.create_pool(
        settings.database, size=pool_size(settings), application_name=db.WORKER_APPLICATION
    )
    deliveries = webhook_deliveries(settings, pool)
    try:
        await serve(
            settings,
            pool=pool,
            registry=kinds(settings, pool, deliveries),
            rounds=rounds(settings, pool),
            collectors=[deliveries.metrics],
        )
    finally:
        await deliveries.close()
        await pool.close()
