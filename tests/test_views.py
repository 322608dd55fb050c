"""The operator views (migration 0006) against real PostgreSQL, on a known set of jobs and
workers whose times are set relative to the database clock."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg
import pytest

MINUTE = 60.0

INSERT_WAITING = """
WITH job AS (
    INSERT INTO job_queue (kind, attempts, error, worker_id, created_at, run_at, started_at, lease_expires_at)
    VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), now() + make_interval(secs => $6),
            now() + make_interval(secs => $7), now() + make_interval(secs => $8))
    RETURNING id, created_at
), described AS (
    INSERT INTO generations (job_id, animal, num_images, created_at) SELECT id, 'cat', 2, created_at FROM job
)
SELECT id FROM job
"""

INSERT_FINISHED = """
WITH job AS (
    INSERT INTO finished_jobs (id, kind, status, attempts, max_attempts, error, created_at, started_at,
                               finished_at, version)
    VALUES (gen_random_uuid(), $1, $2, $3, 3, $4, now() + make_interval(secs => $5),
            now() + make_interval(secs => $6), now() + make_interval(secs => $7), 3)
    RETURNING id, created_at
), described AS (
    INSERT INTO generations (job_id, animal, num_images, created_at) SELECT id, 'cat', 2, created_at FROM job
)
SELECT id FROM job
"""

INSERT_WORKER = """
INSERT INTO workers (id, host, pid, concurrency, running, kinds, started_at, last_seen_at)
VALUES ($1, 'box', 42, 4, $2, '{generate}', now() - interval '1 hour', now() + make_interval(secs => $3))
"""


async def add_job(
    pool: asyncpg.Pool,
    *,
    status: str = "pending",
    kind: str = "generate",
    created: float = 0.0,
    run: float | None = None,
    started: float | None = None,
    lease: float | None = None,
    finished: float | None = None,
    attempts: int = 0,
    error: str | None = None,
    worker_id: str | None = None,
) -> UUID:
    """Insert one job (and its generation); times are seconds from now (negative: in the past),
    `run` defaults to `created`."""
    if status in ("pending", "processing"):
        run = created if run is None else run
        return await pool.fetchval(
            INSERT_WAITING, kind, attempts, error, worker_id, created, run, started, lease
        )
    return await pool.fetchval(INSERT_FINISHED, kind, status, attempts, error, created, started, finished)


@dataclass
class Scene:
    pending_old: UUID
    pending_new: UUID
    retrying: UUID
    expired: UUID
    healthy: UUID
    long_running: UUID
    completed: UUID
    failed: UUID
    canceled: UUID
    other_kind: UUID


@pytest.fixture
async def scene(pool: asyncpg.Pool) -> Scene:
    """One job of every interesting sort, one of another kind, and a fresh worker `w-fresh`
    beside a stale `w-stale`."""
    await pool.execute(INSERT_WORKER, "w-fresh", 2, -5.0)
    await pool.execute(INSERT_WORKER, "w-stale", 1, -10 * MINUTE)
    return Scene(
        pending_old=await add_job(pool, created=-10 * MINUTE),
        pending_new=await add_job(pool),
        retrying=await add_job(pool, created=-2 * MINUTE, run=10.0, attempts=1, error="the model is on fire"),
        expired=await add_job(
            pool,
            status="processing",
            created=-3 * MINUTE,
            started=-2 * MINUTE,
            lease=-MINUTE,
            attempts=1,
            worker_id="w-stale",
        ),
        healthy=await add_job(
            pool,
            status="processing",
            created=-MINUTE,
            started=-10.0,
            lease=20.0,
            attempts=1,
            worker_id="w-fresh",
        ),
        long_running=await add_job(
            pool,
            status="processing",
            created=-20 * MINUTE,
            started=-8 * MINUTE,
            lease=20.0,
            attempts=1,
            worker_id="w-fresh",
        ),
        completed=await add_job(
            pool,
            status="completed",
            created=-90 * MINUTE,
            started=-89 * MINUTE,
            finished=-88 * MINUTE,
            attempts=1,
        ),
        failed=await add_job(
            pool,
            status="failed",
            created=-40 * MINUTE,
            started=-31 * MINUTE,
            finished=-30 * MINUTE,
            attempts=3,
            error="out of attempts",
        ),
        canceled=await add_job(pool, status="canceled", created=-5 * MINUTE, finished=-4 * MINUTE),
        other_kind=await add_job(pool, kind="webhook", created=-30 * MINUTE),
    )


async def test_queue_summary_lists_all_five_statuses_of_a_kind_even_with_no_jobs(pool):
    """With no job at all, queue_summary still has one row per status of every kind a worker
    runs, in lifecycle order, at 0."""
    await pool.execute(INSERT_WORKER, "w-fresh", 0, -5.0)
    rows = await pool.fetch("SELECT kind, status, jobs, oldest_created_at, due FROM queue_summary")
    assert [tuple(row) for row in rows] == [
        ("generate", "pending", 0, None, 0),
        ("generate", "processing", 0, None, None),
        ("generate", "completed", 0, None, None),
        ("generate", "failed", 0, None, None),
        ("generate", "canceled", 0, None, None),
    ]


async def test_queue_summary_counts_each_status_and_how_long_the_head_of_the_queue_waited(pool, scene):
    """queue_summary counts jobs per kind and status with the age of the oldest, and for
    pending how many are due and how long the longest-due one has waited (a retry not yet due
    is left out)."""
    rows = {(row["kind"], row["status"]): row for row in await pool.fetch("SELECT * FROM queue_summary")}
    generate = {status: row for (kind, status), row in rows.items() if kind == "generate"}
    assert {status: row["jobs"] for status, row in generate.items()} == {
        "pending": 3,
        "processing": 3,
        "completed": 1,
        "failed": 1,
        "canceled": 1,
    }
    pending = generate["pending"]
    assert pending["due"] == 2
    assert 10 * MINUTE <= pending["longest_wait"].total_seconds() < 11 * MINUTE
    assert 10 * MINUTE <= pending["oldest_age"].total_seconds() < 11 * MINUTE
    assert 20 * MINUTE <= generate["processing"]["oldest_age"].total_seconds() < 21 * MINUTE
    assert generate["completed"]["longest_wait"] is None
    assert rows["webhook", "pending"]["jobs"] == 1 and rows["webhook", "completed"]["jobs"] == 0


async def test_stuck_jobs_are_expired_leases_long_runs_and_long_due_pending_jobs(pool, scene):
    """stuck_jobs shows running jobs whose lease lapsed or that ran over 5 minutes, and
    waiting jobs due for over a minute, longest first, each with its kind and reason."""
    rows = await pool.fetch("SELECT * FROM stuck_jobs")
    assert [(row["id"], row["kind"], row["reason"]) for row in rows] == [
        (scene.other_kind, "webhook", "due for over a minute and not claimed"),
        (scene.pending_old, "generate", "due for over a minute and not claimed"),
        (scene.long_running, "generate", "running for over 5 minutes"),
        (scene.expired, "generate", "lease expired, not yet reclaimed"),
    ]
    expired = rows[3]
    assert (expired["status"], expired["worker_id"]) == ("processing", "w-stale")
    assert 2 * MINUTE <= expired["waiting_or_running"].total_seconds() < 3 * MINUTE


async def test_recent_failures_are_failed_jobs_and_retrying_ones_newest_first(pool, scene):
    """recent_failures shows failed jobs and unfinished jobs with an error (outcome retrying),
    newest first, and no job that never failed."""
    rows = await pool.fetch("SELECT * FROM recent_failures")
    assert [(row["id"], row["outcome"], row["error"]) for row in rows] == [
        (scene.retrying, "retrying", "the model is on fire"),
        (scene.failed, "failed", "out of attempts"),
    ]
    failed = rows[1]
    assert (failed["kind"], failed["attempts"]) == ("generate", 3)
    assert failed["finished_at"] is not None and rows[0]["finished_at"] is None


async def test_live_workers_are_those_seen_recently_with_the_jobs_they_hold(pool, scene):
    """live_workers leaves out a worker unseen for 10 minutes and shows the kinds and the
    running jobs of each live one."""
    rows = await pool.fetch("SELECT * FROM live_workers")
    assert [(row["id"], row["kinds"], row["running"], row["processing_jobs"]) for row in rows] == [
        ("w-fresh", ["generate"], 2, 2)
    ]
    assert 4 <= rows[0]["seconds_since_heartbeat"] < 60


async def test_the_jobs_view_shows_waiting_running_and_finished_jobs_alike(pool, scene):
    """jobs, the view an operator reads, has every job once with its status: waiting and
    running ones from job_queue, finished ones from finished_jobs, with the running job's
    worker, attempt, start and lease."""
    rows = {row["id"]: row for row in await pool.fetch("SELECT * FROM jobs")}
    assert len(rows) == 10
    assert rows[scene.healthy]["status"] == "processing"
    assert (
        rows[scene.healthy]["worker_id"] == "w-fresh" and rows[scene.healthy]["lease_expires_at"] is not None
    )
    assert rows[scene.healthy]["attempts"] == 1 and rows[scene.healthy]["started_at"] is not None
    assert rows[scene.retrying]["status"] == "pending" and rows[scene.completed]["status"] == "completed"
    assert rows[scene.canceled]["finished_at"] is not None and rows[scene.pending_new]["finished_at"] is None
