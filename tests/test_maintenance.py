"""The maintenance loop and the queue's rotation, against real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from app import queue
from app.queue import jobs
from app.queue.maintenance import Maintenance, Round
from tests.support import insert_jobs, wait_for

NOW = {"max_move": 1000, "min_dead": 0, "min_interval": 0, "lock_wait": 0.1, "held_for": 0}
"""Rotation settings that rotate whenever asked, while a transaction holds back VACUUM."""


@pytest.fixture
async def old_snapshot(database_url):
    """Another session holding a snapshot (and so VACUUM's horizon) open: what rotation is for."""
    holder = await asyncpg.connect(database_url)
    await holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    await holder.fetchval("SELECT txid_current()")
    yield holder
    await holder.close()


async def test_a_round_that_raises_is_logged_with_its_traceback_and_runs_again(caplog):
    """A maintenance round raising a non-database error is logged (with traceback), counted,
    and runs again at its next turn; the other rounds never stop."""
    calls = {"flaky": 0, "steady": 0}
    failures: list[str] = []

    async def flaky() -> None:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise KeyError("a bug, not an outage")

    async def steady() -> None:
        calls["steady"] += 1

    maintenance = Maintenance(
        [Round("flaky", 0.05, flaky), Round("steady", 0.05, steady)], on_failure=failures.append
    )
    with caplog.at_level(logging.ERROR, logger="app.queue.maintenance"):
        running = asyncio.create_task(maintenance.run())
        try:
            await wait_for(lambda: _at_least(calls, flaky=3, steady=3), timeout=5)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    assert failures == ["flaky"]
    [record] = [
        record for record in caplog.records if record.getMessage() == "maintenance round flaky failed"
    ]
    assert record.exc_info is not None and record.exc_info[0] is KeyError


async def _at_least(calls: dict[str, int], **wanted: int) -> bool:
    return all(calls[name] >= count for name, count in wanted.items())


async def partition_of(pool: asyncpg.Pool, job_id) -> int:
    return await pool.fetchval("SELECT part FROM job_queue WHERE id = $1", job_id)


async def test_rotation_moves_live_jobs_and_truncates_the_oldest_partition(pool, old_snapshot):
    """Three rotations cycle through the partitions: the jobs of the oldest one (waiting,
    running, scheduled) move to the current one with their state and ids, the partition is
    truncated (its dead rows gone whatever snapshot is held), and the running job's worker still
    completes it."""
    finished = await insert_jobs(pool, 50)
    for _ in range(50):
        [done] = await jobs.claim(pool, worker_id="w2", wanted={"test": 1}, lease_seconds=30)
        assert await jobs.complete_many(pool, worker_id="w2", jobs=[(done.id, done.attempts)]) == {done.id}
    assert set(finished) == {row["id"] for row in await pool.fetch("SELECT id FROM finished_jobs")}
    [running, waiting, later] = await insert_jobs(pool, 3)
    await pool.execute("UPDATE job_queue SET run_at = now() + interval '1 hour' WHERE id = $1", later)
    [claimed] = await jobs.claim(pool, worker_id="w1", wanted={"test": 1}, lease_seconds=30)
    if claimed.id != running:  # the two due jobs share a run_at: either may come first
        running, waiting = waiting, running
    await pool.execute("VACUUM job_queue_0")  # removes nothing: the old snapshot still sees them
    assert await pool.fetchval("SELECT pg_relation_size('job_queue_0')") > 0
    before = {row["id"]: dict(row) for row in await pool.fetch("SELECT * FROM job_queue")}
    assert {record["part"] for record in before.values()} == {0}
    moved = [await jobs.rotate(pool, **NOW) for _ in range(3)]
    after = {row["id"]: dict(row) for row in await pool.fetch("SELECT * FROM job_queue")}
    assert moved == [0, 0, 3], "the third rotation reaches partition 0 and moves its three jobs"
    assert await pool.fetchval("SELECT pg_relation_size('job_queue_0')") == 0, "truncated, dead rows and all"
    assert after.keys() == before.keys()
    for job_id, row in after.items():
        assert {**row, "part": 0} == before[job_id]
    assert await jobs.complete_many(pool, worker_id="w1", jobs=[(running, 1)]) == {running}
    [next_one] = await jobs.claim(pool, worker_id="w3", wanted={"test": 5}, lease_seconds=30)
    assert next_one.id == waiting


async def test_rotation_gives_up_rather_than_wait_for_a_long_transaction(pool, database_url, old_snapshot):
    """A transaction that has read the oldest partition holds a lock the truncation needs:
    the rotation waits at most its lock_wait, does nothing, and the queue goes on."""
    await insert_jobs(pool, 1)
    await jobs.rotate(pool, **NOW)
    await jobs.rotate(pool, **NOW)  # partition 0, holding the job, is now the oldest
    reader = await asyncpg.connect(database_url)
    try:
        await reader.execute("BEGIN")
        await reader.fetch("SELECT * FROM jobs")
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await jobs.rotate(pool, **NOW) is None
        assert loop.time() - began < 1.0, "lock_wait is 0.1 s"
        assert await pool.fetchval("SELECT current FROM job_queue_rotation") == 2
        assert len(await jobs.claim(pool, worker_id="w1", wanted={"test": 5}, lease_seconds=30)) == 1
    finally:
        await reader.close()


@pytest.mark.parametrize(
    ("setting", "value"), [("min_dead", 10**9), ("min_interval", 3600), ("max_move", 0), ("held_for", 3600)]
)
async def test_rotation_waits_until_it_is_worth_it(pool, old_snapshot, setting, value):
    """No rotation with too few dead rows, too soon after the last one, with more live jobs in
    the oldest partition than it may move (a backlog waits for the next turn), or while no
    transaction has held VACUUM back for long."""
    await insert_jobs(pool, 3)
    for _ in range(2):
        await jobs.rotate(pool, **NOW)
    await pool.execute("UPDATE job_queue_rotation SET rotated_at = now() - interval '1 day'")
    if setting in ("min_dead", "held_for"):
        assert await jobs.rotate(pool, **{**NOW, setting: value}) is None
    elif setting == "min_interval":
        await jobs.rotate(pool, **NOW)  # reaches partition 0: moves its jobs, rotated_at now
        assert await jobs.rotate(pool, **{**NOW, setting: value}) is None
    else:
        assert await jobs.rotate(pool, **{**NOW, setting: value}) is None
        assert {row["part"] for row in await pool.fetch("SELECT part FROM job_queue")} == {0}


async def test_without_a_transaction_holding_vacuum_back_rotation_does_nothing(pool):
    """Dead rows alone never rotate: VACUUM removes them, and a rotation would only pause the
    queue for nothing."""
    for _ in range(20):
        [job] = await jobs.claim(pool, worker_id="w", wanted={"test": 1}, lease_seconds=30) or [None]
        if job is None:
            await insert_jobs(pool, 1)
            continue
        await jobs.complete_many(pool, worker_id="w", jobs=[(job.id, job.attempts)])
    # No client transaction here is 5 s old (the test's own last a few milliseconds).
    assert await jobs.rotate(pool, **{**NOW, "held_for": 5}) is None
    assert await pool.fetchval("SELECT current FROM job_queue_rotation") == 0


async def test_cancelling_in_psql_finishes_the_job_like_the_api(pool):
    """UPDATE jobs SET status = 'canceled' (the view an operator reads) cancels through the
    same function as the API: the job is finished, with finished_at, and nothing is left in
    the queue; changes the view cannot make are refused with a hint."""
    [job_id] = await insert_jobs(pool, 1)
    await pool.execute("UPDATE jobs SET status = 'canceled' WHERE id = $1", job_id)
    row = await pool.fetchrow("SELECT status, finished_at FROM jobs WHERE id = $1", job_id)
    assert row["status"] == "canceled" and row["finished_at"] is not None
    assert await pool.fetchval("SELECT count(*) FROM job_queue") == 0
    with pytest.raises(asyncpg.RaiseError, match="not one the queue can make"):
        await pool.execute("UPDATE jobs SET attempts = 7 WHERE id = $1", job_id)
    [other] = await queue.enqueue(pool, [queue.NewJob("test")])
    await pool.execute("UPDATE jobs SET priority = 5 WHERE id = $1", other)
    assert await pool.fetchval("SELECT priority FROM job_queue WHERE id = $1", other) == 5
