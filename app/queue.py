"""The queue mechanism: claim, complete, fail. It knows nothing about images; what a job does
is a `Handler` passed in by the caller.

Every state change after a claim is conditional on the worker still owning that attempt of
the job (`worker_id` and `attempts` together form the fencing token), so a worker that lost
its job can never overwrite the outcome of another.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from uuid import UUID

import asyncpg

from app.batching import Batcher
from app.models import Job
from app.sql import queries

Handler = Callable[[Job], Awaitable[None]]
"""Does a claimed job's work. Returning means success; raising `JobFailed` fails the attempt
with its message (retried when `retryable` and attempts remain); raising `OwnershipLost`
abandons it quietly. Any other exception counts as a retryable failure."""

Connection = asyncpg.Connection | asyncpg.Pool


class JobFailed(Exception):
    """The attempt failed; its message is what the client will read as `error`."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class OwnershipLost(Exception):
    """The worker no longer owns the job (lease lost, canceled); drop it, write nothing."""


async def claim(
    conn: Connection, *, worker_id: str, limit: int, lease_seconds: float
) -> list[Job]:
    rows = await conn.fetch(queries.job_claim, worker_id, limit, lease_seconds)
    return [Job.from_record(row) for row in rows]


async def complete(conn: Connection, *, job_id: UUID, worker_id: str, attempt: int) -> bool:
    """Mark one job completed; False when the worker no longer owned it."""
    return bool(await complete_many(conn, worker_id=worker_id, jobs=[(job_id, attempt)]))


async def complete_many(
    conn: Connection, *, worker_id: str, jobs: list[tuple[UUID, int]]
) -> set[UUID]:
    """Mark (job id, attempt) pairs completed in one statement; return the ids the worker still
    owned (and so completed)."""
    ids, attempts = zip(*jobs) if jobs else ((), ())
    rows = await conn.fetch(queries.job_complete_many, worker_id, list(ids), list(attempts))
    return {row["id"] for row in rows}


def completions(pool: asyncpg.Pool, *, worker_id: str) -> Batcher[Job, bool]:
    """Completes finished jobs in batches (see app/batching.py); each submit answers whether
    the worker still owned the job, and so completed it."""

    async def write(batch: list[Job]) -> list[bool]:
        owned = await complete_many(
            pool, worker_id=worker_id, jobs=[(job.id, job.attempts) for job in batch]
        )
        return [job.id in owned for job in batch]

    return Batcher(write)


async def fail(
    conn: Connection,
    *,
    job_id: UUID,
    worker_id: str,
    attempt: int,
    error: str,
) -> bool:
    """Mark the job failed with `error`; False when the worker no longer owned it."""
    return await conn.fetchval(queries.job_fail, job_id, worker_id, attempt, error) is not None


async def retry(
    conn: Connection, *, job_id: UUID, worker_id: str, attempt: int, error: str, delay: float
) -> bool:
    """Requeue the job, due in `delay` seconds; False when the worker no longer owned it."""
    row = await conn.fetchval(queries.job_retry, job_id, worker_id, attempt, error, delay)
    return row is not None


async def hand_back(conn: Connection, *, worker_id: str, jobs: list[Job]) -> list[UUID]:
    """Return unfinished jobs to the queue now, without counting their attempts."""
    rows = await conn.fetch(
        queries.job_hand_back, worker_id, [job.id for job in jobs], [job.attempts for job in jobs]
    )
    return [row["id"] for row in rows]


async def renew_leases(
    conn: Connection, *, worker_id: str, job_ids: list[UUID], lease_seconds: float
) -> set[UUID]:
    """Extend the leases the worker still holds; return the ids it still owns."""
    rows = await conn.fetch(queries.job_renew_leases, worker_id, job_ids, lease_seconds)
    return {row["id"] for row in rows}


async def reclaim_expired(conn: Connection, *, limit: int = 100) -> list[asyncpg.Record]:
    """Requeue (or fail, when out of attempts) jobs whose lease lapsed; return (id, status,
    worker_id) of each."""
    return await conn.fetch(queries.job_reclaim_expired, limit)


async def next_run_at(conn: Connection) -> datetime | None:
    return await conn.fetchval(queries.job_next_run_at)


async def heartbeat(
    conn: Connection, *, worker_id: str, host: str, pid: int, concurrency: int, running: int
) -> None:
    await conn.execute(queries.worker_heartbeat, worker_id, host, pid, concurrency, running)


async def unregister(conn: Connection, *, worker_id: str) -> None:
    await conn.execute(queries.worker_delete, worker_id)


async def delete_dead_workers(conn: Connection, *, unseen_for: float) -> list[str]:
    return [row["id"] for row in await conn.fetch(queries.worker_delete_dead, unseen_for)]
