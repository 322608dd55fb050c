"""The queue's statements on jobs, one function per query in sql/queue.sql.

Every change to a claimed job is conditional on the worker still owning that attempt of it
(`worker_id` and `attempts` together are the fencing token), so a worker that lost its job can
never overwrite the outcome of another.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from app import db
from app.queue.kinds import Job
from app.sql import queries

Connection = db.Executor


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to enqueue."""

    kind: str
    args: Any = None
    """JSON-serialisable arguments, or None."""
    max_attempts: int = 3
    priority: int = 0
    watched: bool = False
    run_at: datetime | None = None
    """Not claimed before this time; None: now."""
    id: UUID = field(default_factory=uuid.uuid4)


async def enqueue(conn: Connection, jobs: Sequence[NewJob]) -> dict[UUID, datetime]:
    """Create jobs in one statement (one NOTIFY per kind, on commit); {id: created_at}."""
    rows = await conn.fetch(
        queries.job_enqueue,
        [job.id for job in jobs],
        [job.kind for job in jobs],
        [None if job.args is None else json.dumps(job.args) for job in jobs],
        [job.priority for job in jobs],
        [job.max_attempts for job in jobs],
        [job.watched for job in jobs],
        [job.run_at for job in jobs],
    )
    return {row[0]: row[1] for row in rows}


async def claim(
    conn: Connection, *, worker_id: str, wanted: Mapping[str, int], lease_seconds: float
) -> list[Job]:
    """Claim up to `wanted[kind]` due jobs of each kind for `worker_id`."""
    if len(wanted) == 1:
        [(kind, count)] = wanted.items()
        rows = await conn.fetch(queries.job_claim_kind, worker_id, kind, count, lease_seconds)
    else:
        rows = await conn.fetch(
            queries.job_claim, worker_id, list(wanted), list(wanted.values()), lease_seconds
        )
    return [
        Job(id_, kind, args, attempts, max_attempts, run_at, started_at, created_at, worker_id)
        for id_, kind, args, attempts, max_attempts, run_at, started_at, created_at in rows
    ]


async def next_due(conn: Connection, *, kinds: Sequence[str]) -> dict[str, datetime]:
    """When the earliest waiting job of each of these kinds falls due (kinds with none left out)."""
    return {row[0]: row[1] for row in await conn.fetch(queries.job_next_due, list(kinds))}


async def complete_many(conn: Connection, *, worker_id: str, jobs: Sequence[tuple[UUID, int]]) -> set[UUID]:
    """Complete (job id, attempt) pairs; return the ids the worker still owned."""
    ids, attempts = _columns(jobs, 2)
    rows = await conn.fetch(queries.job_complete_many, worker_id, ids, attempts)
    return {row[0] for row in rows}


async def fail_many(conn: Connection, *, worker_id: str, jobs: Sequence[tuple[UUID, int, str]]) -> set[UUID]:
    """Fail (job id, attempt, error) for good; return the ids the worker still owned."""
    ids, attempts, errors = _columns(jobs, 3)
    rows = await conn.fetch(queries.job_fail_many, worker_id, ids, attempts, errors)
    return {row[0] for row in rows}


async def retry_many(
    conn: Connection, *, worker_id: str, jobs: Sequence[tuple[UUID, int, str, float]]
) -> set[UUID]:
    """Requeue (job id, attempt, error, delay in seconds); return the ids the worker still owned."""
    ids, attempts, errors, delays = _columns(jobs, 4)
    rows = await conn.fetch(queries.job_retry_many, worker_id, ids, attempts, errors, delays)
    return {row[0] for row in rows}


async def hand_back(conn: Connection, *, worker_id: str, jobs: Sequence[tuple[UUID, int]]) -> list[UUID]:
    """Return unfinished (job id, attempt) pairs to the queue now, not counting the attempt."""
    ids, attempts = _columns(jobs, 2)
    return [row[0] for row in await conn.fetch(queries.job_hand_back, worker_id, ids, attempts)]


async def renew_leases(
    conn: Connection, *, worker_id: str, jobs: Sequence[tuple[UUID, int]], lease_seconds: float
) -> set[UUID]:
    """Extend the leases the worker still holds; return the ids it still owns."""
    ids, attempts = _columns(jobs, 2)
    rows = await conn.fetch(queries.job_renew_leases, worker_id, ids, attempts, lease_seconds)
    return {row[0] for row in rows}


async def owned(conn: Connection, *, job_id: UUID, worker_id: str, attempt: int) -> bool:
    """Whether the worker still owns this attempt of the job."""
    still: bool = await conn.fetchval(queries.job_owned, job_id, worker_id, attempt)
    return still


async def reclaim_expired(conn: Connection, *, limit: int = 100) -> list[asyncpg.Record]:
    """Requeue (or fail, when out of attempts) jobs whose lease lapsed; (id, kind, status,
    worker_id) of each."""
    return await conn.fetch(queries.job_reclaim_expired, limit)


async def cancel(conn: Connection, *, job_id: UUID) -> str | None:
    """Cancel a waiting or running job; the status it had, or None when unknown or finished."""
    was: str | None = await conn.fetchval(queries.job_cancel, job_id)
    return was


async def pending_count(conn: Connection, *, kind: str, cap: int) -> int:
    """Waiting jobs of `kind`, counted no further than `cap`."""
    count: int = await conn.fetchval(queries.job_pending_count_capped, kind, cap)
    return count


async def depth(conn: Connection, *, kind: str) -> asyncpg.Record:
    """(pending, processing, oldest_due, now) for `kind`."""
    row = await conn.fetchrow(queries.job_queue_depth, kind)
    if row is None:
        raise RuntimeError("job_queue_depth returned no row")  # an aggregate always returns one
    return row


async def rotate(
    conn: Connection, *, max_move: int, min_dead: int, min_interval: float, lock_wait: float, held_for: float
) -> int | None:
    """Empty and truncate the oldest partition of job_queue if worth it; rows moved, or None."""
    moved: int | None = await conn.fetchval(
        queries.job_queue_rotate, max_move, min_dead, min_interval, lock_wait, held_for
    )
    return moved


async def delete_finished(
    conn: db.Connection, *, older_than_days: float, limit: int, kinds: Sequence[str]
) -> list[tuple[UUID, str]]:
    """Delete up to `limit` jobs of `kinds` finished more than `older_than_days` ago, oldest
    first, with their events; (id, kind) of each."""
    rows = await conn.fetch(queries.finished_jobs_delete_old, older_than_days, limit, list(kinds))
    return [(row[0], row[1]) for row in rows]


async def events_head(conn: Connection) -> tuple[int, str]:
    """The id of the last event recorded (0: none yet) and the snapshot it was read under."""
    row = await conn.fetchrow(queries.job_events_head)
    if row is None:
        raise RuntimeError("job_events_head returned no row")  # an aggregate always returns one
    return row["last_id"], row["snapshot"]


async def events_settled(conn: Connection, *, snapshot: str) -> bool:
    """Whether every transaction running under `snapshot` has ended: an event id missing then
    and still missing now will never appear."""
    settled: bool = await conn.fetchval(queries.job_events_settled, snapshot)
    return settled


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows (job id first) as `width` column lists, sorted by job id: statements that change
    several running jobs lock them in this order, so that two of them cannot deadlock."""
    return (
        [list(column) for column in zip(*sorted(rows, key=_first), strict=True)]
        if rows
        else [[] for _ in range(width)]
    )


def _first(row: tuple[Any, ...]) -> Any:
    return row[0]
