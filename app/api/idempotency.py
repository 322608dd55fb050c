"""Idempotency-Key for POST /generations: the same key and body give the same job, even when
two requests race; the same key with another body is refused. The key is recorded in the
job's own transaction. One function per query in sql/idempotency.sql."""

from __future__ import annotations

import asyncpg

from app import db
from app.images import generations
from app.images.generations import Generation, Request
from app.sql import queries


class IdempotencyConflict(Exception):
    """The key was already used, with a different body."""


class _LostRace(Exception):
    """Another request recorded the same key first; undo this one's job."""


@db.translated
async def create_once(
    pool: asyncpg.Pool, *, key: str, fingerprint: str, ttl: float, request: Request
) -> tuple[Generation, bool]:
    """Create a generation under an Idempotency-Key, or return the one the key already made
    (True). When the key is taken (a request that raced this one, or one the caller did not
    see), the insert is rolled back and the key's job is answered instead: never two jobs.
    Callers look the key up first (`replay`), so the rolled-back insert happens only on a race.
    """
    async with pool.acquire() as conn:
        while True:
            try:
                async with db.transaction(conn):
                    [job] = await generations.create_many(conn, [request])
                    if (
                        await conn.fetchval(
                            queries.idempotency_claim, key, fingerprint, job.id, ttl, request.owner or 0
                        )
                        is None
                    ):
                        raise _LostRace
            except _LostRace:
                existing = await replay(conn, key=key, fingerprint=fingerprint, owner=request.owner)
                if existing is not None:
                    return existing, True
                continue  # the winner's key expired or its job was deleted meanwhile
            return job, False


@db.translated
async def replay(conn: db.Executor, *, key: str, fingerprint: str, owner: int | None) -> Generation | None:
    """The job a live Idempotency-Key sent with API key `owner` made, None if the key is
    unknown or expired; IdempotencyConflict if it was used with another body. Each API key
    has its own Idempotency-Keys."""
    existing = await conn.fetchrow(queries.idempotency_get, key, owner or 0)
    if existing is None:
        return None
    if existing["fingerprint"] != fingerprint:
        raise IdempotencyConflict(key)
    return await generations.get(conn, job_id=existing["job_id"])


@db.translated
async def forget_expired(pool: asyncpg.Pool, *, batch_size: int = 500) -> int:
    """Delete the expired records, `batch_size` per statement; return how many. No lock
    needed: SKIP LOCKED keeps concurrent workers off each other's rows."""
    forgotten = 0
    while True:
        count: int = await pool.fetchval(queries.idempotency_delete_expired, batch_size)
        forgotten += count
        if count < batch_size:
            return forgotten
