"""The queue mechanism: claim, complete, fail. It knows nothing about images; what a job does
is a `Handler` passed in by the caller.

Every state change after a claim is conditional on the worker still owning that attempt of
the job (`worker_id` and `attempts` together form the fencing token), so a worker that lost
its job can never overwrite the outcome of another.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from uuid import UUID

import asyncpg

from app.models import Job
from app.sql import queries

Handler = Callable[[Job], Awaitable[None]]
"""Does a claimed job's work. Returning means success; raising `JobFailed` fails the job with
its message; raising `OwnershipLost` abandons it quietly."""


class JobFailed(Exception):
    """The job cannot be done; its message is what the client will read as `error`."""


class OwnershipLost(Exception):
    """The worker no longer owns the job (lease lost, canceled); drop it, write nothing."""


async def claim(
    conn: asyncpg.Connection | asyncpg.Pool, *, worker_id: str, limit: int, lease_seconds: float
) -> list[Job]:
    rows = await conn.fetch(queries.job_claim, worker_id, limit, lease_seconds)
    return [Job.from_record(row) for row in rows]


async def complete(
    conn: asyncpg.Connection | asyncpg.Pool, *, job_id: UUID, worker_id: str, attempt: int
) -> bool:
    """Mark the job completed; False when the worker no longer owned it."""
    return await conn.fetchval(queries.job_complete, job_id, worker_id, attempt) is not None


async def fail(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    job_id: UUID,
    worker_id: str,
    attempt: int,
    error: str,
) -> bool:
    """Mark the job failed with `error`; False when the worker no longer owned it."""
    return await conn.fetchval(queries.job_fail, job_id, worker_id, attempt, error) is not None
