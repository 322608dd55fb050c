"""Retention against real PostgreSQL: which jobs a sweep deletes, with what their kind keeps of
them, in batches, by one worker at a time; and expired Idempotency-Key records."""

from __future__ import annotations

import asyncio
from uuid import UUID

import asyncpg

from app.api import idempotency
from app.images import generations
from app.queue.maintenance import RETENTION_LOCK, Maintenance, Round, delete_finished, queue_rounds
from app.sql import queries
from tests.support import insert_generations, set_status, wait_for

DAY = 86_400.0
FORGET = {"generate": generations.forget}
"""What this process registers: generations, which keep their requests and images."""

INSERT_IMAGE = "INSERT INTO images (job_id, idx, png, sha256) VALUES ($1, 0, '\\x89'::bytea, 'x')"


async def add_job(pool: asyncpg.Pool, status: str, *, days_ago: float) -> UUID:
    """A generation in `status` with one image, created (and, when finished, finished)
    `days_ago` days ago."""
    [job_id] = await insert_generations(pool, 1)
    await pool.execute(INSERT_IMAGE, job_id)
    if status != "pending":
        await set_status(pool, [job_id], status)
    await pool.execute(
        "UPDATE finished_jobs SET finished_at = now() - make_interval(secs => $2) WHERE id = $1",
        job_id,
        days_ago * DAY,
    )
    await pool.execute(
        "UPDATE job_queue SET created_at = now() - make_interval(secs => $2) WHERE id = $1",
        job_id,
        days_ago * DAY,
    )
    return job_id


async def add_old_jobs(pool: asyncpg.Pool, count: int) -> list[UUID]:
    return [await add_job(pool, "completed", days_ago=10) for _ in range(count)]


async def remaining(pool: asyncpg.Pool) -> set[UUID]:
    return {row["id"] for row in await pool.fetch("SELECT id FROM jobs")}


async def is_empty(pool: asyncpg.Pool) -> bool:
    return not await remaining(pool)


async def generations_left(pool: asyncpg.Pool) -> set[UUID]:
    return {row["job_id"] for row in await pool.fetch("SELECT job_id FROM generations")}


async def jobs_with_images(pool: asyncpg.Pool) -> set[UUID]:
    return {row["job_id"] for row in await pool.fetch("SELECT DISTINCT job_id FROM images")}


async def sweep(pool: asyncpg.Pool, **options: object) -> int:
    return await delete_finished(pool, forget=FORGET, **{"older_than_days": 7, "pause": 0, **options})


async def test_old_finished_jobs_go_with_their_generations_and_images_and_the_rest_stays(pool):
    """A sweep deletes the completed, failed and canceled jobs finished before the cutoff, with
    their generations, images and events, and keeps recent finished jobs and old pending and
    processing ones."""
    finished = ("completed", "failed", "canceled")
    old = {await add_job(pool, status, days_ago=8) for status in finished}
    kept = {await add_job(pool, status, days_ago=6) for status in finished}
    kept |= {await add_job(pool, status, days_ago=30) for status in ("pending", "processing")}
    assert await pool.fetchval("SELECT count(*) FROM job_events WHERE job_id = ANY($1)", list(old)) > 0

    assert await sweep(pool) == len(old)
    assert await remaining(pool) == kept
    assert await generations_left(pool) == kept
    assert await jobs_with_images(pool) == kept
    assert await pool.fetchval("SELECT count(*) FROM job_events WHERE job_id = ANY($1)", list(old)) == 0


async def test_jobs_of_a_kind_this_process_does_not_know_are_kept(pool):
    """Retention deletes only kinds registered here: deleting another kind's jobs would leave
    behind what that kind keeps of them."""
    await pool.execute(
        "INSERT INTO finished_jobs (id, kind, status, attempts, max_attempts, created_at, finished_at, version) "
        "VALUES (gen_random_uuid(), 'elsewhere', 'completed', 1, 3, now() - interval '30 days', "
        "        now() - interval '30 days', 2)"
    )
    old = await add_old_jobs(pool, 1)
    assert await sweep(pool) == 1
    assert await pool.fetchval("SELECT count(*) FROM finished_jobs WHERE kind = 'elsewhere'") == 1
    assert not set(old) & await remaining(pool)


async def test_zero_days_keeps_everything(pool):
    """RETENTION_DAYS=0 means keep forever: the sweep deletes nothing, however old the jobs."""
    jobs = set(await add_old_jobs(pool, 2))
    assert await sweep(pool, older_than_days=0) == 0
    assert await remaining(pool) == jobs


async def test_small_batches_still_delete_every_old_job(pool):
    """With batches of 2, a sweep goes on until all 5 old jobs are deleted."""
    await add_old_jobs(pool, 5)
    assert await sweep(pool, batch_size=2) == 5
    assert await remaining(pool) == set()


async def test_max_batches_bounds_one_sweep(pool):
    """`max_batches` stops a sweep after that many batches, oldest jobs first."""
    newest = await add_job(pool, "completed", days_ago=8)
    await add_old_jobs(pool, 4)
    assert await sweep(pool, batch_size=2, max_batches=2) == 4
    assert await remaining(pool) == {newest}


async def test_a_sweep_gives_way_to_another_worker_holding_the_lock(pool):
    """While another transaction holds the retention lock, a sweep deletes nothing and says 0."""
    jobs = set(await add_old_jobs(pool, 3))
    async with pool.acquire() as conn, conn.transaction():
        assert await conn.fetchval(queries.maintenance_try_lock, RETENTION_LOCK)
        assert await sweep(pool) == 0
    assert await remaining(pool) == jobs


async def test_racing_sweeps_delete_each_job_once(database_url, pool):
    """Two sweeps on two pools at once delete every old job exactly once between them."""
    await add_old_jobs(pool, 7)
    other = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        counts = await asyncio.gather(
            sweep(pool, batch_size=2, pause=0.01),
            sweep(other, batch_size=2, pause=0.01),
        )
    finally:
        await other.close()
    assert sum(counts) == 7
    assert await remaining(pool) == set()


async def test_the_retention_round_sweeps_until_canceled(pool):
    """The maintenance loop's retention round sweeps on its interval and stops when the loop is
    canceled."""
    await add_old_jobs(pool, 3)
    rounds = queue_rounds(
        pool, lease_seconds=30, retention_days=7, retention_batch=500, forget=FORGET, retention_every=0.05
    )
    loop = asyncio.create_task(Maintenance(rounds).run())
    try:
        await wait_for(lambda: is_empty(pool))
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert loop.cancelled()


async def add_key(pool: asyncpg.Pool, key: str, *, expires_in: float) -> None:
    job_id = await add_job(pool, "completed", days_ago=0)
    await pool.execute(
        "INSERT INTO idempotency_keys (key, fingerprint, job_id, expires_at) "
        "VALUES ($1, 'f', $2, now() + make_interval(secs => $3))",
        key,
        job_id,
        expires_in,
    )


async def keys(pool: asyncpg.Pool) -> set[str]:
    return {row["key"] for row in await pool.fetch("SELECT key FROM idempotency_keys")}


async def test_expired_idempotency_keys_are_forgotten_in_batches_and_live_ones_kept(pool):
    """Every expired Idempotency-Key record goes, batch after batch; live ones stay, and so do
    the jobs of both."""
    for n in range(5):
        await add_key(pool, f"old-{n}", expires_in=-60)
    await add_key(pool, "live", expires_in=3600)
    assert await idempotency.forget_expired(pool, batch_size=2) == 5
    assert await keys(pool) == {"live"}
    assert len(await remaining(pool)) == 6


async def test_keeping_every_job_still_forgets_expired_keys(pool):
    """With RETENTION_DAYS=0 the queue's rounds delete no job, old or not, while the API's
    round beside them still forgets expired idempotency keys."""
    old_job = (await add_old_jobs(pool, 1))[0]
    await add_key(pool, "old", expires_in=-60)
    rounds = queue_rounds(pool, lease_seconds=0.15, retention_days=0, retention_batch=500, forget=FORGET)

    async def forget_keys() -> None:
        await idempotency.forget_expired(pool)

    loop = asyncio.create_task(Maintenance([*rounds, Round("idempotency-keys", 0.05, forget_keys)]).run())
    try:
        await wait_for(lambda: _no_keys(pool))
        # Another expired key, gone too: later rounds ran, the queue's included.
        await add_key(pool, "old-2", expires_in=-60)
        await wait_for(lambda: _no_keys(pool))
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert old_job in await remaining(pool)


async def _no_keys(pool: asyncpg.Pool) -> bool:
    return not await keys(pool)
