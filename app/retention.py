"""Retention: finished jobs (completed, failed, canceled) are deleted with their images once
they finished more than RETENTION_DAYS days ago; RETENTION_DAYS=0 keeps every job. Pending
and processing jobs are never deleted. Expired Idempotency-Key records are forgotten in any
case.

Every worker runs `run_forever`, yet only one sweeps at a time. Each batch is its own short
transaction that first tries `pg_try_advisory_xact_lock` and stops the sweep at once when
another worker holds it. A transaction-level lock rather than a session-level one held for
the whole sweep, because pool connections carry no session state (app/db.py's pool only
rolls back an open transaction when a connection goes back): a session lock would have to
be unlocked by hand on the very connection that took it, and a sweep canceled between two
statements would leave it held by a pooled connection, blocking retention until that
connection closed. A transaction-level lock ends with its transaction, however that ends.
What it costs: between two batches another worker may take over, which is harmless, since a
batch deletes only rows it locked itself (SKIP LOCKED) and a deleted row cannot be deleted
twice.

Batches are small and a short pause separates them, so a sweep never holds locks for long
and leaves room for the queue's own statements.
"""

from __future__ import annotations

import asyncio
import logging
import random
from uuid import UUID

import asyncpg

from app.db import DATABASE_ERRORS
from app.sql import queries

log = logging.getLogger(__name__)

PAUSE = 0.1
"""Seconds between two batches of one sweep."""


async def try_lock(conn: asyncpg.Connection) -> bool:
    """Take the retention lock until the current transaction ends; False when another holds it."""
    return await conn.fetchval(queries.retention_try_lock)


async def delete_finished(
    conn: asyncpg.Connection, *, older_than_days: float, limit: int
) -> list[UUID]:
    """Delete up to `limit` jobs finished more than `older_than_days` ago, oldest first."""
    rows = await conn.fetch(queries.retention_delete_finished, older_than_days, limit)
    return [row["id"] for row in rows]


async def sweep(
    pool: asyncpg.Pool,
    *,
    older_than_days: float,
    batch_size: int = 500,
    max_batches: int | None = None,
    pause: float = PAUSE,
) -> int:
    """Delete the jobs finished more than `older_than_days` days ago, `batch_size` per
    transaction, until none is left or `max_batches` batches ran; return how many it deleted.
    Deletes nothing when `older_than_days` is 0, and stops (returning 0 if it had not started)
    when another worker is sweeping."""
    deleted = batches = 0
    while older_than_days > 0 and (max_batches is None or batches < max_batches):
        async with pool.acquire() as conn, conn.transaction():
            if not await try_lock(conn):
                log.debug("another worker is sweeping", extra={"action": "retention_busy"})
                break
            ids = await delete_finished(conn, older_than_days=older_than_days, limit=batch_size)
        deleted += len(ids)
        batches += 1
        if len(ids) < batch_size:
            break
        await asyncio.sleep(pause)
    if deleted:
        log.info(
            "deleted %d jobs finished over %g days ago, with their images",
            deleted,
            older_than_days,
            extra={"action": "retention_deleted"},
        )
    return deleted


async def forget_expired_keys(pool: asyncpg.Pool, *, batch_size: int = 500, pause: float = PAUSE) -> int:
    """Delete the expired Idempotency-Key records, `batch_size` per statement; return how
    many. No lock needed: SKIP LOCKED keeps concurrent workers off each other's rows."""
    forgotten = 0
    while True:
        count = await pool.fetchval(queries.retention_delete_expired_keys, batch_size)
        forgotten += count
        if count < batch_size:
            return forgotten
        await asyncio.sleep(pause)


async def run_forever(
    pool: asyncpg.Pool,
    *,
    older_than_days: float,
    batch_size: int = 500,
    interval: float = 600.0,
) -> None:
    """Every `interval` seconds (jittered by ±20%, so that workers started together do not
    all try at once), until the task is canceled: sweep old finished jobs (unless
    `older_than_days` is 0) and forget expired idempotency keys. A batch cut short by
    cancellation rolls back. A sweep that fails on a database error is logged and tried
    again at the next interval."""
    while True:
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))
        try:
            await sweep(pool, older_than_days=older_than_days, batch_size=batch_size)
            await forget_expired_keys(pool, batch_size=batch_size)
        except DATABASE_ERRORS as exc:
            log.warning("retention sweep failed: %s", exc, extra={"action": "retention_failed"})
