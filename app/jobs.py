"""Jobs as the API sees them: create, get, list. One function per query in sql/jobs.sql."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import asyncpg

from app.batching import Batcher
from app.models import Job, JobStatus
from app.sql import queries


async def create(
    conn: asyncpg.Connection | asyncpg.Pool, *, num_images: int, animal: str, max_attempts: int
) -> Job:
    return Job.from_record(await conn.fetchrow(queries.job_insert, num_images, animal, max_attempts))


async def create_many(
    conn: asyncpg.Connection | asyncpg.Pool, *, specs: list[tuple[int, str, int]]
) -> list[Job]:
    """Create jobs from (num_images, animal, max_attempts) in one statement; the jobs come
    back in the order of `specs`."""
    ids = [uuid.uuid4() for _ in specs]
    num_images, animals, max_attempts = ([list(column) for column in zip(*specs)] if specs else [[], [], []])
    rows = await conn.fetch(queries.job_insert_many, ids, num_images, animals, max_attempts)
    created = {row["id"]: Job.from_record(row) for row in rows}
    return [created[job_id] for job_id in ids]


def creations(pool: asyncpg.Pool, *, max_batch: int = 500) -> Batcher[tuple[int, str, int], Job]:
    """Creates jobs for concurrent requests together (see app/batching.py): one INSERT, one
    commit and one NOTIFY for all the requests that arrive while the previous insert runs."""

    async def write(batch: list[tuple[int, str, int]]) -> list[Job]:
        return await create_many(pool, specs=batch)

    return Batcher(write, max_batch=max_batch)


class IdempotencyConflict(Exception):
    """The key was already used, with a different body."""


class _LostRace(Exception):
    """Another request recorded the same key first; undo this one's job."""


async def create_once(
    pool: asyncpg.Pool,
    *,
    key: str,
    fingerprint: str,
    ttl: float,
    num_images: int,
    animal: str,
    max_attempts: int,
) -> tuple[Job, bool]:
    """Create a job under an Idempotency-Key, or return the job the key already made (True).

    The key is recorded in the job's own transaction. When the key is taken (a request that
    raced this one, or one the caller did not see), the insert is rolled back and the key's
    job is answered instead: never two jobs. Callers look the key up first (`replay`), so the
    rolled-back insert happens only on a real race.
    """
    async with pool.acquire() as conn:
        while True:
            try:
                async with conn.transaction():
                    job = await create(
                        conn, num_images=num_images, animal=animal, max_attempts=max_attempts
                    )
                    if await conn.fetchval(queries.idempotency_claim, key, fingerprint, job.id, ttl) is None:
                        raise _LostRace
            except _LostRace:
                existing = await replay(conn, key=key, fingerprint=fingerprint)
                if existing is not None:
                    return existing, True
                continue  # the winner's key expired or its job was deleted meanwhile
            return job, False


async def replay(
    conn: asyncpg.Connection | asyncpg.Pool, *, key: str, fingerprint: str
) -> Job | None:
    """The job a live Idempotency-Key made, None if the key is unknown or expired;
    IdempotencyConflict if it was used with another body."""
    existing = await conn.fetchrow(queries.idempotency_get, key)
    if existing is None:
        return None
    if existing["fingerprint"] != fingerprint:
        raise IdempotencyConflict(key)
    return await get(conn, job_id=existing["job_id"])


async def pending_count(conn: asyncpg.Connection | asyncpg.Pool, *, cap: int) -> int:
    """Pending jobs, counted no further than `cap`."""
    return await conn.fetchval(queries.job_pending_count_capped, cap)


async def get(conn: asyncpg.Connection | asyncpg.Pool, *, job_id: UUID) -> Job | None:
    row = await conn.fetchrow(queries.job_get, job_id)
    return None if row is None else Job.from_record(row)


async def cancel(conn: asyncpg.Connection | asyncpg.Pool, *, job_id: UUID) -> bool:
    """Cancel the job if it is pending or processing; False when unknown or already finished."""
    return await conn.fetchval(queries.job_cancel, job_id) is not None


FIRST_PAGE = (datetime.max.replace(tzinfo=timezone.utc), UUID(int=2**128 - 1))
"""A cursor after every job: where the first page starts."""


def list_statement(
    status: JobStatus | None, after: tuple[datetime, UUID] | None, limit: int
) -> tuple[str, tuple[Any, ...]]:
    """The listing query for `status` (None: every job) and its arguments. Each kind of status
    has a query of its own, spelled so that even a generic plan reads the right index."""
    created_at, job_id = after or FIRST_PAGE
    if status is None:
        return queries.job_list, (created_at, job_id, limit)
    if status is JobStatus.PENDING:
        return queries.job_list_pending, (created_at, job_id, limit)
    if status is JobStatus.PROCESSING:
        return queries.job_list_processing, (created_at, job_id, limit)
    return queries.job_list_finished, (status.value, created_at, job_id, limit)


async def list_page(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    status: JobStatus | None,
    after: tuple[datetime, UUID] | None,
    limit: int,
) -> list[Job]:
    """Newest first; `after` is the (created_at, id) of the last job of the previous page."""
    query, args = list_statement(status, after, limit)
    return [Job.from_record(row) for row in await conn.fetch(query, *args)]


async def queue_depth(conn: asyncpg.Connection | asyncpg.Pool) -> asyncpg.Record:
    """(pending, processing, oldest_due, now) from the partial indexes."""
    return await conn.fetchrow(queries.job_queue_depth)
