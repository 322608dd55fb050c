"""The queue against real PostgreSQL: wake-ups, exclusivity, failures, ownership, the plan."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from uuid import UUID

import asyncpg
import pytest

from app import generation, images, jobs, queue
from app.db import JOBS_CHANNEL
from app.models import Job, JobStatus
from app.providers import ProviderError
from app.providers.local import LocalProvider
from app.sql import queries
from app.worker import Timing, Worker
from tests.support import insert_jobs, wait_for, wait_for_earlier_notifications

StartWorker = Callable[..., Awaitable[Worker]]


async def status_counts(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT status, count(*) AS n FROM jobs GROUP BY status")
    return {row["status"]: row["n"] for row in rows}


class CountingHandler:
    """Records how often it ran per job, and the most that ran at once."""

    def __init__(self, pause: float = 0.0) -> None:
        self.runs: collections.Counter[UUID] = collections.Counter()
        self.active = 0
        self.most_active = 0
        self._pause = pause

    async def __call__(self, job: Job) -> None:
        self.runs[job.id] += 1
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            await asyncio.sleep(self._pause)
        finally:
            self.active -= 1


class FailingProvider:
    async def generate(self, *, animal: str, job_id: UUID, index: int) -> bytes:
        raise ProviderError("the model is on fire")


@pytest.mark.smoke
async def test_notify_wakes_an_idle_worker_without_any_sweep(pool, start_worker):
    """With the safety sweep an hour away, a job inserted after the worker went idle is still
    claimed at once: only the NOTIFY can have woken it."""
    handler = CountingHandler()
    await start_worker(handler)
    [first] = await insert_jobs(pool, 1)
    # Done with its start-up looks (one of which, or the NOTIFY, took this job) and idle.
    await wait_for(lambda: _completed(pool, 1))
    [job_id] = await insert_jobs(pool, 1)
    await wait_for(lambda: _completed(pool, 2), timeout=5)
    assert handler.runs == {first: 1, job_id: 1}
    pickup = await pool.fetchval("SELECT started_at - created_at FROM jobs WHERE id = $1", job_id)
    # A NOTIFY wakes it in milliseconds; without one it would wait for the hour-long sweep.
    # Seconds of room for a loaded machine still tell the two apart.
    assert pickup.total_seconds() < 5


async def _completed(pool: asyncpg.Pool, count: int) -> bool:
    return (await status_counts(pool)).get("completed", 0) == count


async def test_jobs_queued_before_the_worker_started_are_found_by_its_start_up_sweep(
    pool, start_worker
):
    """Jobs inserted while no worker listened are claimed when a worker starts."""
    ids = await insert_jobs(pool, 3)
    handler = CountingHandler()
    await start_worker(handler)
    await wait_for(lambda: _completed(pool, 3))
    assert set(handler.runs) == set(ids)


async def test_two_workers_process_500_jobs_each_exactly_once(pool, start_worker):
    """Two workers racing over 500 jobs complete every one, and no handler runs twice for a job."""
    handler = CountingHandler(pause=0.001)
    await start_worker(handler, concurrency=8)
    await start_worker(handler, concurrency=8)
    ids = await insert_jobs(pool, 500)
    await wait_for(lambda: _completed(pool, 500), timeout=60)
    assert set(handler.runs) == set(ids)
    assert max(handler.runs.values()) == 1
    assert await status_counts(pool) == {"completed": 500}
    workers = await pool.fetchval("SELECT count(DISTINCT worker_id) FROM jobs")
    assert workers == 2, "both workers should have taken a share"


async def test_a_worker_runs_at_most_its_concurrency_at_once(pool, start_worker):
    """A worker with concurrency 3 runs three jobs side by side, never four."""
    handler = CountingHandler(pause=0.05)
    await start_worker(handler, concurrency=3)
    await insert_jobs(pool, 12)
    await wait_for(lambda: _completed(pool, 12))
    assert handler.most_active == 3


async def test_a_provider_error_fails_the_job_with_its_message(pool, start_worker):
    """When the provider raises, the job ends `failed` with a readable error and no images."""
    await start_worker(generation.handler(pool, FailingProvider()))
    [job_id] = await insert_jobs(pool, 1, num_images=2)
    await wait_for(lambda: _has_status(pool, job_id, "failed"))
    row = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
    assert "the model is on fire" in row["error"]
    assert row["finished_at"] is not None and row["lease_expires_at"] is None
    assert await pool.fetchval("SELECT count(*) FROM images WHERE job_id = $1", job_id) == 0


async def test_a_crashing_handler_fails_the_job_instead_of_leaving_it_processing(
    pool, start_worker
):
    """An unexpected exception in the handler fails the job with the exception named."""

    async def crash(job: Job) -> None:
        raise RuntimeError("boom")

    await start_worker(crash)
    [job_id] = await insert_jobs(pool, 1)
    await wait_for(lambda: _has_status(pool, job_id, "failed"))
    error = await pool.fetchval("SELECT error FROM jobs WHERE id = $1", job_id)
    assert "RuntimeError" in error and "boom" in error


async def _has_status(pool: asyncpg.Pool, job_id: UUID, status: str) -> bool:
    return await pool.fetchval("SELECT status FROM jobs WHERE id = $1", job_id) == status


async def test_the_generation_handler_stores_every_image_then_completes(pool, start_worker):
    """A real generation stores exactly numImages distinct PNGs and completes the job."""
    await start_worker(generation.handler(pool, LocalProvider(delay=0, size=64)))
    [job_id] = await insert_jobs(pool, 1, num_images=4)
    await wait_for(lambda: _has_status(pool, job_id, "completed"))
    rows = await pool.fetch("SELECT idx, sha256 FROM images WHERE job_id = $1 ORDER BY idx", job_id)
    assert [row["idx"] for row in rows] == [0, 1, 2, 3]
    assert len({row["sha256"] for row in rows}) == 4


async def test_claim_takes_the_oldest_due_jobs_and_skips_future_ones(pool):
    """Claiming returns due jobs oldest first, marks them processing for the claimer, and
    leaves jobs scheduled for later alone."""
    await pool.execute(
        "INSERT INTO jobs (num_images, animal, run_at) VALUES "
        "(1, 'old', now() - interval '2 minutes'), (1, 'new', now() - interval '1 minute'), "
        "(1, 'later', now() + interval '1 hour')"
    )
    first = await queue.claim(pool, worker_id="w1", limit=1, lease_seconds=30)
    rest = await queue.claim(pool, worker_id="w1", limit=10, lease_seconds=30)
    assert [job.animal for job in first] == ["old"]
    assert [job.animal for job in rest] == ["new"]
    assert first[0].status == "processing" and first[0].attempts == 1
    assert first[0].worker_id == "w1" and first[0].lease_expires_at is not None


async def test_a_worker_that_lost_its_job_can_write_nothing(pool):
    """Once another attempt owns the job, the old owner can neither store an image nor
    complete nor fail it."""
    [job_id] = await insert_jobs(pool, 1)
    [job] = await queue.claim(pool, worker_id="w1", limit=1, lease_seconds=30)
    await pool.execute(
        "UPDATE jobs SET worker_id = 'w2', attempts = attempts + 1 WHERE id = $1", job_id
    )
    old = {"job_id": job_id, "worker_id": "w1", "attempt": job.attempts}
    assert not await images.store(pool, index=0, png=b"png", **old)
    assert not await queue.complete(pool, **old)
    assert not await queue.fail(pool, error="late", **old)
    row = await pool.fetchrow("SELECT status, error FROM jobs WHERE id = $1", job_id)
    assert (row["status"], row["error"]) == ("processing", None)
    assert await pool.fetchval("SELECT count(*) FROM images") == 0


@pytest.mark.smoke
async def test_a_bulk_insert_costs_one_notification(database_url, pool):
    """The wake-up trigger is per statement: inserting 100 jobs at once calls it once and
    sends one NOTIFY. (PostgreSQL folds identical notifications of one transaction, so a
    per-row trigger would also deliver one: the trigger's calls are what is counted.)"""
    tgtype = await pool.fetchval(
        "SELECT tgtype FROM pg_trigger WHERE tgname = 'jobs_wake_workers_on_insert'"
    )
    assert tgtype & 1 == 0, "TRIGGER_TYPE_ROW is set: the trigger fires once per row"
    received: list[str] = []
    listener = await asyncpg.connect(database_url)
    try:
        await listener.add_listener(JOBS_CHANNEL, lambda *args: received.append(args[-1]))
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL track_functions = 'pl'")
            await insert_jobs(conn, 100)
            calls = await conn.fetchval(
                "SELECT pg_stat_get_xact_function_calls('jobs_wake_workers'::regproc)"
            )
        assert calls == 1, f"the wake-up trigger ran {calls} times for one 100-row INSERT"
        await wait_for_earlier_notifications(pool, JOBS_CHANNEL, received)
    finally:
        await listener.close()
    assert received == [""]


async def test_the_claim_uses_the_partial_index_with_100k_finished_jobs(pool):
    """With 100,000 completed jobs and a few pending, the claim's plan reads the partial index
    of pending jobs, never the whole table."""
    await pool.execute(
        "INSERT INTO jobs (num_images, animal, status, finished_at) "
        "SELECT 1, 'cat', 'completed', now() FROM generate_series(1, 100000)"
    )
    await insert_jobs(pool, 5)
    await pool.execute("VACUUM ANALYZE jobs")
    async with pool.acquire() as conn:
        plan = json.loads(
            await conn.fetchval("EXPLAIN (FORMAT JSON) " + queries.job_claim, "w1", 4, 30.0)
        )
    nodes = list(_plan_nodes(plan[0]["Plan"]))
    scans = {(node["Node Type"], node.get("Index Name")) for node in nodes if "Relation Name" in node}
    assert ("Index Scan", "jobs_pending_idx") in scans
    assert not any(node_type == "Seq Scan" for node_type, _ in scans)


def _literal(value: object) -> str:
    """An SQL literal for a statement argument (what EXECUTE of a prepared statement takes)."""
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, bytes):
        return f"'\\x{value.hex()}'::bytea"
    if isinstance(value, list):
        kind = "uuid[]" if value and isinstance(value[0], UUID) else "integer[]"
        return f"ARRAY[{', '.join(_literal(item) for item in value)}]::{kind}"
    if isinstance(value, UUID):
        return f"'{value}'::uuid"
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    return "'" + str(value).replace("'", "''") + "'"


async def _plan(conn: asyncpg.Connection, query: str, args: tuple, *, mode: str, analyze: bool = False) -> dict:
    """The plan of `query` as a prepared statement (`mode`: force_custom_plan or
    force_generic_plan). EXPLAIN of a query with bound parameters would always plan with
    their values; only EXECUTE of a prepared statement shows the generic plan."""
    await conn.execute(f"PREPARE probe AS {query}")
    try:
        await conn.execute(f"SET plan_cache_mode = {mode}")
        options = "ANALYZE, FORMAT JSON" if analyze else "FORMAT JSON"
        literals = ", ".join(_literal(arg) for arg in args)
        return json.loads(await conn.fetchval(f"EXPLAIN ({options}) EXECUTE probe({literals})"))[0]["Plan"]
    finally:
        await conn.execute("DEALLOCATE probe")
        await conn.execute("RESET plan_cache_mode")


PLAN_MODES = ("force_custom_plan", "force_generic_plan")


@pytest.mark.parametrize("status", ["pending", "processing", "completed", "failed", "canceled"])
async def test_listing_one_status_reads_few_rows_with_100k_finished_jobs(pool, status):
    """GET /generations?status=… with 100,000 completed jobs and five in every other status
    reads a few hundred rows of jobs at most, never the table, in custom and generic plans (a
    generic plan cannot see the status parameter, and it is the one a busy server ends up
    using). Counted from EXPLAIN ANALYZE: rows returned plus rows filtered out."""
    await pool.execute(
        "INSERT INTO jobs (num_images, animal, status, finished_at) "
        "SELECT 1, 'cat', 'completed', now() FROM generate_series(1, 100000)"
    )
    await pool.execute(
        "INSERT INTO jobs (num_images, animal, status, worker_id, attempts, lease_expires_at, finished_at) "
        "SELECT 1, 'cat', s, CASE WHEN s = 'processing' THEN 'w1' END, 1, "
        "       CASE WHEN s = 'processing' THEN now() + interval '30 seconds' END, "
        "       CASE WHEN s IN ('failed', 'canceled') THEN now() END "
        "FROM unnest(ARRAY['pending', 'processing', 'failed', 'canceled']) AS s, generate_series(1, 5)"
    )
    await pool.execute("VACUUM ANALYZE jobs")
    query, args = jobs.list_statement(JobStatus(status), None, 51)
    async with pool.acquire() as conn:
        for mode in PLAN_MODES:
            plan = await _plan(conn, query, args, mode=mode, analyze=True)
            read = sum(
                node["Actual Rows"] * node["Actual Loops"]
                + node.get("Rows Removed by Filter", 0)
                + node.get("Rows Removed by Index Recheck", 0)
                for node in _plan_nodes(plan)
                if node.get("Relation Name") == "jobs"
            )
            assert read <= 500, (mode, read)
    page = await jobs.list_page(pool, status=JobStatus(status), after=None, limit=51)
    assert len(page) == (51 if status == "completed" else 5)


async def test_a_column_added_by_a_later_migration_does_not_break_claiming(pool):
    """Workers of the previous release keep claiming after a migration adds a column to jobs
    (rows are read with jobs.*): the column they do not know is left out of their Job."""
    await pool.execute("ALTER TABLE jobs ADD COLUMN priority integer NOT NULL DEFAULT 0")
    await insert_jobs(pool, 1)
    [job] = await queue.claim(pool, worker_id="w1", limit=1, lease_seconds=30)
    assert job.status is JobStatus.PROCESSING and job.attempts == 1


BY_ID_STATEMENTS = {
    "job_complete_many": lambda job_id: ("w1", [job_id], [1]),
    "job_renew_leases": lambda job_id: ("w1", [job_id], 30.0),
    "job_fail": lambda job_id: (job_id, "w1", 1, "boom"),
    "job_retry": lambda job_id: (job_id, "w1", 1, "boom", 1.0),
    "job_hand_back": lambda job_id: ("w1", [job_id], [1]),
    "image_store": lambda job_id: (job_id, "w1", 1, 0, b"png", "sha"),
}


async def _index_searches(conn: asyncpg.Connection, name: str, job_id: UUID, mode: str) -> set[tuple[str, str]]:
    """(index, condition) of every index search in the statement's plan."""
    plan = await _plan(conn, getattr(queries, name), BY_ID_STATEMENTS[name](job_id), mode=mode)
    return {(node["Index Name"], node["Index Cond"]) for node in _plan_nodes(plan) if "Index Cond" in node}


async def test_only_the_primary_key_can_find_a_processing_job_by_id(pool):
    """Completing, renewing, failing, retrying, handing back and storing an image look a job up
    by id. No index but the primary key may serve them: an index keyed by status would walk an
    entry for every job processed since the last vacuum, and the planner did choose one while
    a fresh table drained 20,000 jobs (completions ten times slower). Shown by taking the
    primary key away, in a transaction rolled back, with sequential scans discouraged: no
    index is then searched by status, in custom or generic plans."""
    await insert_jobs(pool, 2_000)
    await pool.execute(
        "UPDATE jobs SET status = 'processing', worker_id = 'w1', attempts = 1, "
        "lease_expires_at = now() + interval '30 seconds'"
    )
    job_id = await pool.fetchval("SELECT id FROM jobs LIMIT 1")
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("ALTER TABLE jobs DROP CONSTRAINT jobs_pkey CASCADE")
            await conn.execute("SET LOCAL enable_seqscan = off")
            for mode in PLAN_MODES:
                for name in BY_ID_STATEMENTS:
                    by_status = {
                        (index, condition)
                        for index, condition in await _index_searches(conn, name, job_id, mode)
                        if "status" in condition
                    }
                    assert by_status == set(), (name, mode, by_status)
        finally:
            await tx.rollback()


def _plan_nodes(node: dict) -> collections.abc.Iterator[dict]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


async def test_the_listener_reconnects_and_sweeps_after_its_connection_is_killed(
    pool, start_worker
):
    """When PostgreSQL kills the LISTEN connection, the worker reconnects by itself and keeps
    picking up new jobs."""
    handler = CountingHandler()
    worker = await start_worker(handler)
    await pool.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
    )
    await wait_for(lambda: _reconnected(worker))
    await insert_jobs(pool, 2)
    await wait_for(lambda: _completed(pool, 2))
    assert sum(handler.runs.values()) == 2


async def test_jobs_inserted_while_the_listener_was_deaf_are_found_after_it_reconnects(
    pool, start_worker
):
    """Notifications sent while the LISTEN connection is down are lost; the worker looks for
    work as soon as it reconnects. Shown with the insert trigger off (no NOTIFY at all) and the
    safety sweep an hour away: only the look after reconnecting can find these jobs."""
    handler = CountingHandler()
    worker = await start_worker(handler)
    await insert_jobs(pool, 1)
    await wait_for(lambda: _completed(pool, 1))  # the worker is past its start-up look, idle
    await pool.execute("ALTER TABLE jobs DISABLE TRIGGER jobs_wake_workers_on_insert")
    deaf = await insert_jobs(pool, 2)
    killed_at = await pool.fetchval("SELECT clock_timestamp()")
    killed = await pool.fetch(
        "SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
    )
    assert [row["killed"] for row in killed] == [True], "no LISTEN connection was killed"
    await wait_for(lambda: _reconnected(worker))
    await wait_for(lambda: _completed(pool, 3))
    assert sum(handler.runs.values()) == 3
    # Claimed after the kill (database clock), so by the look after reconnecting, not by a
    # look of the worker's that happened to be under way when they were inserted.
    claimed = await pool.fetch("SELECT started_at FROM jobs WHERE id = ANY($1::uuid[])", deaf)
    assert all(row["started_at"] > killed_at for row in claimed), (killed_at, claimed)


async def test_the_safety_sweep_finds_a_job_no_notification_announced(pool, start_worker):
    """WORKER_POLL_INTERVAL: with no NOTIFY at all (the insert trigger off), an idle worker
    still finds a new job on its jittered safety sweep."""
    handler = CountingHandler()
    await start_worker(handler, timing=Timing(poll_interval=0.3))
    await insert_jobs(pool, 1)
    await wait_for(lambda: _completed(pool, 1))  # past its start-up look, idle
    await pool.execute("ALTER TABLE jobs DISABLE TRIGGER jobs_wake_workers_on_insert")
    await insert_jobs(pool, 1)
    await wait_for(lambda: _completed(pool, 2), timeout=5)
    assert sum(handler.runs.values()) == 2


async def _reconnected(worker: Worker) -> bool:
    return worker.listener.reconnects >= 1 and worker.listener.connected.is_set()
