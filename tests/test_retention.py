"""Retention against real PostgreSQL: which jobs a sweep deletes, in batches, by one worker
at a time."""

from __future__ import annotations

import asyncio
from uuid import UUID

import asyncpg

from app import retention
from app.sql import queries
from tests.support import wait_for

DAY = 86_400.0

INSERT_JOB = """
INSERT INTO jobs (status, num_images, animal, worker_id, lease_expires_at, finished_at)
VALUES ($1, 1, 'cat',
        CASE WHEN $1 = 'processing' THEN 'w-1' END,
        CASE WHEN $1 = 'processing' THEN now() + interval '30 seconds' END,
        now() - make_interval(secs => $2))
RETURNING id
"""

INSERT_IMAGE = "INSERT INTO images (job_id, idx, png, sha256) VALUES ($1, 0, '\\x89'::bytea, 'x')"


async def add_job(pool: asyncpg.Pool, status: str, *, finished_days_ago: float) -> UUID:
    """Insert a job in `status` with one image; its finished_at is set even when it is
    unfinished (as an operator's hand edit could leave it), so only its status protects it."""
    job_id = await pool.fetchval(INSERT_JOB, status, finished_days_ago * DAY)
    await pool.execute(INSERT_IMAGE, job_id)
    return job_id


async def add_old_jobs(pool: asyncpg.Pool, count: int) -> list[UUID]:
    return [await add_job(pool, "completed", finished_days_ago=10) for _ in range(count)]


async def remaining(pool: asyncpg.Pool) -> set[UUID]:
    return {row["id"] for row in await pool.fetch("SELECT id FROM jobs")}


async def is_empty(pool: asyncpg.Pool) -> bool:
    return not await remaining(pool)


async def jobs_with_images(pool: asyncpg.Pool) -> set[UUID]:
    return {row["job_id"] for row in await pool.fetch("SELECT DISTINCT job_id FROM images")}


async def test_old_finished_jobs_go_with_their_images_and_everything_else_stays(pool):
    """A sweep deletes the completed, failed and canceled jobs finished before the cutoff, with
    their images, and keeps recent finished jobs and old pending and processing ones."""
    finished = ("completed", "failed", "canceled")
    old = {await add_job(pool, status, finished_days_ago=8) for status in finished}
    kept = {await add_job(pool, status, finished_days_ago=6) for status in finished}
    unfinished = ("pending", "processing")
    kept |= {await add_job(pool, status, finished_days_ago=30) for status in unfinished}

    assert await retention.sweep(pool, older_than_days=7) == len(old)
    assert await remaining(pool) == kept
    assert await jobs_with_images(pool) == kept


async def test_zero_days_keeps_everything(pool):
    """RETENTION_DAYS=0 means keep forever: the sweep deletes nothing, however old the jobs."""
    jobs = set(await add_old_jobs(pool, 2))
    assert await retention.sweep(pool, older_than_days=0) == 0
    assert await remaining(pool) == jobs


async def test_small_batches_still_delete_every_old_job(pool):
    """With batches of 2, a sweep goes on until all 5 old jobs are deleted."""
    await add_old_jobs(pool, 5)
    assert await retention.sweep(pool, older_than_days=7, batch_size=2, pause=0) == 5
    assert await remaining(pool) == set()


async def test_max_batches_bounds_one_sweep(pool):
    """`max_batches` stops a sweep after that many batches, oldest jobs first."""
    newest = await add_job(pool, "completed", finished_days_ago=8)
    await add_old_jobs(pool, 4)
    assert await retention.sweep(pool, older_than_days=7, batch_size=2, max_batches=2, pause=0) == 4
    assert await remaining(pool) == {newest}


async def test_a_sweep_gives_way_to_another_worker_holding_the_lock(pool):
    """While another transaction holds the retention lock, a sweep deletes nothing and says 0."""
    jobs = set(await add_old_jobs(pool, 3))
    async with pool.acquire() as conn, conn.transaction():
        assert await conn.fetchval(queries.retention_try_lock)
        assert await retention.sweep(pool, older_than_days=7) == 0
    assert await remaining(pool) == jobs


async def test_racing_sweeps_delete_each_job_once(database_url, pool):
    """Two sweeps on two pools at once delete every old job exactly once between them."""
    await add_old_jobs(pool, 7)
    other = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        counts = await asyncio.gather(
            retention.sweep(pool, older_than_days=7, batch_size=2, pause=0.01),
            retention.sweep(other, older_than_days=7, batch_size=2, pause=0.01),
        )
    finally:
        await other.close()
    assert sum(counts) == 7
    assert await remaining(pool) == set()


async def test_run_forever_sweeps_until_canceled(pool):
    """The retention loop sweeps on its interval and stops when its task is canceled."""
    await add_old_jobs(pool, 3)
    loop = asyncio.create_task(retention.run_forever(pool, older_than_days=7, interval=0.05))
    try:
        await wait_for(lambda: is_empty(pool))
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert loop.cancelled()


async def add_key(pool: asyncpg.Pool, key: str, *, expires_in: float) -> None:
    job_id = await add_job(pool, "completed", finished_days_ago=0)
    await pool.execute(
        "INSERT INTO idempotency_keys (key, fingerprint, job_id, expires_at) "
        "VALUES ($1, 'f', $2, now() + make_interval(secs => $3))",
        key, job_id, expires_in,
    )


async def keys(pool: asyncpg.Pool) -> set[str]:
    return {row["key"] for row in await pool.fetch("SELECT key FROM idempotency_keys")}


async def test_expired_idempotency_keys_are_forgotten_in_batches_and_live_ones_kept(pool):
    """Every expired Idempotency-Key record goes, batch after batch; live ones stay, and so do
    the jobs of both."""
    for n in range(5):
        await add_key(pool, f"old-{n}", expires_in=-60)
    await add_key(pool, "live", expires_in=3600)
    assert await retention.forget_expired_keys(pool, batch_size=2, pause=0) == 5
    assert await keys(pool) == {"live"}
    assert len(await remaining(pool)) == 6


async def test_keeping_every_job_still_forgets_expired_keys(pool):
    """With RETENTION_DAYS=0 the retention loop deletes no job, old or not, but still forgets
    expired idempotency keys."""
    old_job = (await add_old_jobs(pool, 1))[0]
    await add_key(pool, "old", expires_in=-60)
    loop = asyncio.create_task(retention.run_forever(pool, older_than_days=0, interval=0.05))
    try:
        await wait_for(lambda: _no_keys(pool))
        # Another expired key, gone too: a later round ran whole, its sweep included, whichever
        # order a round takes its two steps in.
        await add_key(pool, "old-2", expires_in=-60)
        await wait_for(lambda: _no_keys(pool))
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert old_job in await remaining(pool)


async def _no_keys(pool: asyncpg.Pool) -> bool:
    return not await keys(pool)
