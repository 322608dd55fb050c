"""The queue against real PostgreSQL: wake-ups, exclusivity, failures, ownership, the plan."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg
import pytest

from app import queue
from app.db import JOBS_CHANNEL
from app.images import generate, generations, stores
from app.images.providers import Image, ProviderError
from app.images.providers.local import LocalProvider
from app.queue import jobs
from app.queue.kinds import Job, Status
from app.queue.worker import Timing, Worker
from app.sql import queries
from tests.support import (
    insert_generations,
    insert_jobs,
    set_status,
    wait_for,
    wait_for_earlier_notifications,
)

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
    name = "local"

    async def generate(
        self, *, prompt: str, model: str | None, animal: str, job_id: UUID, index: int
    ) -> Image:
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


async def test_jobs_queued_before_the_worker_started_are_found_by_its_start_up_sweep(pool, start_worker):
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
    await start_worker(generate.kind(pool, FailingProvider()))
    [job_id] = await insert_generations(pool, 1, num_images=2)
    await wait_for(lambda: _has_status(pool, job_id, "failed"))
    row = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
    assert "the model is on fire" in row["error"]
    assert row["finished_at"] is not None and row["lease_expires_at"] is None
    assert await pool.fetchval("SELECT count(*) FROM images WHERE job_id = $1", job_id) == 0


async def test_a_crashing_handler_fails_the_job_instead_of_leaving_it_processing(pool, start_worker):
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
    await start_worker(generate.kind(pool, LocalProvider(delay=0, size=64)))
    [job_id] = await insert_generations(pool, 1, num_images=4)
    await wait_for(lambda: _has_status(pool, job_id, "completed"))
    rows = await pool.fetch("SELECT idx, sha256 FROM images WHERE job_id = $1 ORDER BY idx", job_id)
    assert [row["idx"] for row in rows] == [0, 1, 2, 3]
    assert len({row["sha256"] for row in rows}) == 4


async def test_claim_takes_the_oldest_due_jobs_and_skips_future_ones(pool):
    """Claiming returns due jobs oldest first, marks them running for the claimer with a lease,
    and leaves jobs scheduled for later alone."""
    now = await pool.fetchval("SELECT now()")
    await queue.enqueue(
        pool,
        [
            queue.NewJob("test", args={"name": name}, run_at=now + timedelta(minutes=minutes))
            for name, minutes in (("new", -1), ("old", -2), ("later", 60))
        ],
    )
    first = await jobs.claim(pool, worker_id="w1", wanted={"test": 1}, lease_seconds=30)
    rest = await jobs.claim(pool, worker_id="w1", wanted={"test": 10}, lease_seconds=30)
    assert [job.args["name"] for job in first] == ["old"]
    assert [job.args["name"] for job in rest] == ["new"]
    assert first[0].attempts == 1 and first[0].worker_id == "w1"
    row = await pool.fetchrow(
        "SELECT status, worker_id, lease_expires_at FROM jobs WHERE id = $1", first[0].id
    )
    assert row["status"] == "processing" and row["worker_id"] == "w1" and row["lease_expires_at"] > now


async def test_a_claim_takes_each_kind_up_to_its_own_limit(pool):
    """One claim asks for several kinds at once, each up to its own count, and takes the more
    urgent (higher priority) of a kind's due jobs first."""
    await queue.enqueue(pool, [queue.NewJob("a", args={"n": n}) for n in range(5)])
    await queue.enqueue(pool, [queue.NewJob("b", args={"n": n}, priority=n) for n in range(5)])
    claimed = await jobs.claim(pool, worker_id="w1", wanted={"a": 2, "b": 3}, lease_seconds=30)
    by_kind = collections.defaultdict(list)
    for job in claimed:
        by_kind[job.kind].append(job.args["n"])
    assert len(by_kind["a"]) == 2
    assert sorted(by_kind["b"]) == [2, 3, 4]


async def test_a_worker_that_lost_its_job_can_write_nothing(pool):
    """Once another attempt owns the job, the old owner can neither store an image, nor
    complete, fail, retry, renew or hand it back."""
    [job_id] = await insert_generations(pool, 1)
    [job] = await jobs.claim(pool, worker_id="w1", wanted={"generate": 1}, lease_seconds=30)
    await pool.execute("UPDATE job_queue SET worker_id = 'w2', attempts = attempts + 1 WHERE id = $1", job_id)
    mine = [(job_id, job.attempts)]
    assert not await stores.save(
        pool,
        stores.PostgresStore(),
        job_id=job_id,
        worker_id="w1",
        attempt=job.attempts,
        index=0,
        png=b"png",
    )
    assert not await jobs.complete_many(pool, worker_id="w1", jobs=mine)
    assert not await jobs.fail_many(pool, worker_id="w1", jobs=[(job_id, job.attempts, "late")])
    assert not await jobs.retry_many(pool, worker_id="w1", jobs=[(job_id, job.attempts, "late", 0.0)])
    assert not await jobs.renew_leases(pool, worker_id="w1", jobs=mine, lease_seconds=30)
    assert not await jobs.hand_back(pool, worker_id="w1", jobs=mine)
    row = await pool.fetchrow("SELECT status, error, worker_id FROM jobs WHERE id = $1", job_id)
    assert (row["status"], row["error"], row["worker_id"]) == ("processing", None, "w2")
    assert await pool.fetchval("SELECT count(*) FROM images") == 0


@pytest.mark.smoke
async def test_a_bulk_insert_wakes_each_kind_once(database_url, pool):
    """Enqueueing 200 jobs of two kinds in one statement wakes each kind once: job_wake runs
    twice, not 200 times, and two notifications arrive, each naming its kind, so workers of
    other kinds sleep on. (PostgreSQL folds identical notifications of one transaction, so a
    wake-up per row would also deliver two: the function's calls are what is counted.)"""
    received: list[str] = []
    listener = await asyncpg.connect(database_url)
    try:
        await listener.add_listener(JOBS_CHANNEL, lambda *args: received.append(args[-1]))
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL track_functions = 'pl'")
            await queue.enqueue(conn, [queue.NewJob(kind) for kind in ("a", "b") for _ in range(100)])
            calls = await conn.fetchval("SELECT pg_stat_get_xact_function_calls('job_wake'::regproc)")
        await wait_for_earlier_notifications(pool, JOBS_CHANNEL, received)
    finally:
        await listener.close()
    assert calls == 2, f"job_wake ran {calls} times for one 200-row enqueue of two kinds"
    assert sorted(received) == ["a", "b"]


async def finished_generations(pool: asyncpg.Pool, count: int, status: str = "completed") -> None:
    """`count` finished generations straight into finished_jobs and generations (fast)."""
    await pool.execute(
        "WITH ids AS (SELECT gen_random_uuid() AS id, now() - make_interval(secs => n) AS at "
        "             FROM generate_series(1, $1) AS n), "
        "g AS (INSERT INTO generations (job_id, animal, num_images, created_at) SELECT id, 'cat', 1, at FROM ids) "
        "INSERT INTO finished_jobs (id, kind, status, attempts, max_attempts, created_at, finished_at, version) "
        "SELECT id, 'generate', $2, 1, 3, at, at, 3 FROM ids",
        count,
        status,
    )


async def test_the_claim_reads_only_the_queue_with_100k_finished_jobs(pool):
    """With 100,000 finished jobs and 2,000 waiting, the claim finds due jobs through
    job_queue's due index and reads nothing of finished_jobs, in custom and generic plans."""
    await finished_generations(pool, 100_000)
    await insert_jobs(pool, 2_000)
    await pool.execute("VACUUM ANALYZE")
    async with pool.acquire() as conn:
        for mode in PLAN_MODES:
            plan = await _plan(conn, queries.job_claim, ("w1", ["test"], [4], 30.0), mode=mode)
            relations = {node["Relation Name"] for node in _plan_nodes(plan) if "Relation Name" in node}
            assert relations <= {"job_queue", "job_queue_0", "job_queue_1", "job_queue_2"}, (mode, relations)
            assert "job_queue_0_kind_priority_run_at_idx" in _reads(plan, "job_queue_0"), mode


def _literal(value: object) -> str:
    """An SQL literal for a statement argument (what EXECUTE of a prepared statement takes)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, bytes):
        return f"'\\x{value.hex()}'::bytea"
    if isinstance(value, list):
        return f"ARRAY[{', '.join(_literal(item) for item in value)}]"
    if isinstance(value, UUID):
        return f"'{value}'::uuid"
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    return "'" + str(value).replace("'", "''") + "'"


async def _plan(
    conn: asyncpg.Connection, query: str, args: tuple, *, mode: str, analyze: bool = False
) -> dict:
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


QUEUE_TABLES = {"job_queue", "job_queue_0", "job_queue_1", "job_queue_2", "finished_jobs", "generations"}


@pytest.mark.parametrize("status", ["pending", "processing", "completed", "failed", "canceled"])
async def test_listing_one_status_reads_few_rows_with_100k_finished_jobs(pool, status):
    """GET /generations?status=… with 100,000 completed jobs and five in every other status
    reads a few hundred rows at most, never a whole table, in custom and generic plans (a
    generic plan cannot see the status parameter, and it is the one a busy server ends up
    using). Counted from EXPLAIN ANALYZE: rows returned plus rows filtered out."""
    await finished_generations(pool, 100_000)
    for finished in ("failed", "canceled"):
        await finished_generations(pool, 5, finished)
    await insert_generations(pool, 5)
    await set_status(pool, await insert_generations(pool, 5), "processing")
    await pool.execute("VACUUM ANALYZE")
    query, args = generations.list_statement(Status(status), None, 51)
    async with pool.acquire() as conn:
        for mode in PLAN_MODES:
            plan = await _plan(conn, query, args, mode=mode, analyze=True)
            read = sum(
                node["Actual Rows"] * node["Actual Loops"]
                + node.get("Rows Removed by Filter", 0)
                + node.get("Rows Removed by Index Recheck", 0)
                for node in _plan_nodes(plan)
                if node.get("Relation Name") in QUEUE_TABLES
            )
            assert read <= 500, (mode, read)
    page = await generations.list_page(pool, status=Status(status), after=None, limit=51)
    assert len(page) == (51 if status == "completed" else 5)
    assert {job.status for job in page} == {Status(status)}


async def test_a_column_added_by_a_later_migration_does_not_break_claiming(pool):
    """Workers of the previous release keep claiming after a migration adds a column to
    job_queue: the claim names the columns it returns."""
    await pool.execute("ALTER TABLE job_queue ADD COLUMN tenant integer NOT NULL DEFAULT 0")
    await insert_jobs(pool, 1)
    [job] = await jobs.claim(pool, worker_id="w1", wanted={"test": 1}, lease_seconds=30)
    assert job.attempts == 1


BY_ID_STATEMENTS = {
    "job_complete_many": lambda job_id: ("w1", [job_id], [1]),
    "job_fail_many": lambda job_id: ("w1", [job_id], [1], ["boom"]),
    "job_retry_many": lambda job_id: ("w1", [job_id], [1], ["boom"], [1.0]),
    "job_hand_back": lambda job_id: ("w1", [job_id], [1]),
    "job_renew_leases": lambda job_id: ("w1", [job_id], [1], 30.0),
    "job_owned": lambda job_id: (job_id, "w1", 1),
    "image_record": lambda job_id: (
        job_id,
        "w1",
        1,
        0,
        "postgres",
        None,
        b"png",
        3,
        "sha",
        "image/png",
        "local",
        None,
        None,
        1,
    ),
}


async def test_statements_on_running_jobs_find_them_by_primary_key(pool):
    """Completing, failing, retrying, handing back, renewing, checking ownership and storing an
    image find a running job through job_queue's primary key, never by reading a partition,
    in custom and generic plans, on a queue of 2,000 running jobs and 20,000 dead rows (a
    partition read costs a millisecond per thousand dead rows: the planner chose one while
    a fresh table drained 20,000 jobs). The claim finds due jobs through the due index, then
    the rows it claims by primary key."""
    await insert_jobs(pool, 20_000)
    for _ in range(10):
        done = await jobs.claim(pool, worker_id="w0", wanted={"test": 2_000}, lease_seconds=30)
        await jobs.complete_many(pool, worker_id="w0", jobs=[(job.id, job.attempts) for job in done])
    await insert_jobs(pool, 2_000)
    running = await jobs.claim(pool, worker_id="w1", wanted={"test": 2_000}, lease_seconds=30)
    await pool.execute("ANALYZE")
    job_id = running[0].id
    async with pool.acquire() as conn:
        for mode in PLAN_MODES:
            for name, args in [
                *BY_ID_STATEMENTS.items(),
                ("job_claim", lambda _: ("w2", ["test"], [10], 30.0)),
            ]:
                tx = conn.transaction()
                await tx.start()
                try:
                    plan = await _plan(conn, getattr(queries, name), args(job_id), mode=mode)
                finally:
                    await tx.rollback()
                reads = _reads(plan, "job_queue_0")  # where every job is
                assert reads, (name, mode)
                wanted = ("kind_priority_run_at_idx", "pkey") if name == "job_claim" else ("pkey",)
                assert all(index.endswith(wanted) for index in reads), (name, mode, reads)


def _reads(plan: dict, relation: str) -> list[str]:
    """How the plan reads `relation`: the index each scan searches ("" for a sequential scan)."""
    reads = []
    for node in _plan_nodes(plan):
        if node.get("Relation Name") != relation or node["Node Type"] == "ModifyTable":
            continue
        if node["Node Type"] == "Bitmap Heap Scan":
            reads.extend(child.get("Index Name", "") for child in _plan_nodes(node) if child is not node)
        else:
            reads.append(node.get("Index Name", ""))
    return reads


def _plan_nodes(node: dict) -> collections.abc.Iterator[dict]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


async def test_the_listener_reconnects_and_sweeps_after_its_connection_is_killed(pool, start_worker):
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


async def test_jobs_inserted_while_the_listener_was_deaf_are_found_after_it_reconnects(pool, start_worker):
    """Notifications sent while the LISTEN connection is down are lost; the worker looks for
    work as soon as it reconnects. Shown with jobs inserted without a NOTIFY at all (straight
    into job_queue) and the safety sweep an hour away: only the look after reconnecting can
    find these jobs."""
    handler = CountingHandler()
    worker = await start_worker(handler)
    await insert_jobs(pool, 1)
    await wait_for(lambda: _completed(pool, 1))  # the worker is past its start-up look, idle
    deaf = await insert_silently(pool, 2)
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
    """WORKER_POLL_INTERVAL: with no NOTIFY at all (a job inserted straight into job_queue), an
    idle worker still finds a new job on its jittered safety sweep."""
    handler = CountingHandler()
    await start_worker(handler, timing=Timing(poll_interval=0.3, lease_seconds=30, shutdown_grace=0))
    await insert_jobs(pool, 1)
    await wait_for(lambda: _completed(pool, 1))  # past its start-up look, idle
    await insert_silently(pool, 1)
    await wait_for(lambda: _completed(pool, 2), timeout=5)
    assert sum(handler.runs.values()) == 2


async def insert_silently(pool: asyncpg.Pool, count: int) -> list[UUID]:
    """Jobs of the test kind inserted without the enqueue statement, so without a NOTIFY."""
    rows = await pool.fetch(
        "INSERT INTO job_queue (kind) SELECT 'test' FROM generate_series(1, $1) RETURNING id", count
    )
    return [row["id"] for row in rows]


async def _reconnected(worker: Worker) -> bool:
    return worker.listener.reconnects >= 1 and worker.listener.connected.is_set()
