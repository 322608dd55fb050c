"""What a worker process is made of: every kind of job menagerie runs, configured from the
settings, and the maintenance rounds of the layers above the queue. The `menagerie worker`
command (worker.py, `menagerie run`) builds it here; the queue itself knows none of this."""

from __future__ import annotations

import asyncpg

from app import db
from app.api import idempotency
from app.images import generate, s3
from app.images.providers.local import LocalProvider
from app.queue.kinds import Kind, configured
from app.queue.maintenance import Round
from app.queue.process import serve
from app.settings import Settings


def kinds(settings: Settings, pool: asyncpg.Pool) -> list[Kind]:
    """Every registered kind, with its settings applied (`<KIND>_SLOTS`, ...)."""
    provider = LocalProvider(delay=settings.image_provider_delay, size=settings.image_size)
    registered = [
        generate.kind(
            pool, provider, image_stores=s3.stores_for(settings), db_patience=settings.lease_seconds
        )
    ]
    return [configured(kind, settings.kind(kind.name)) for kind in registered]


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
    images), plus outcomes, heartbeat and maintenance."""
    return settings.worker_concurrency + 4


async def serve_worker(settings: Settings) -> None:
    """Run one worker process: every registered kind (or those WORKER_KINDS names) and every
    layer's maintenance rounds, until SIGTERM or SIGINT."""
    pool = await db.create_pool(
        settings.database, size=pool_size(settings), application_name=db.WORKER_APPLICATION
    )
    try:
        await serve(settings, pool=pool, registry=kinds(settings, pool), rounds=rounds(settings, pool))
    finally:
        await pool.close()
