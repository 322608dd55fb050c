"""Upgrading in place: a database at the head before the general queue (migration 0005),
holding pending, processing and finished generations with images, migrates with yoyo; its
finished jobs read as before over HTTP and its unfinished ones run to completion."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
from yoyo import get_backend, read_migrations

from app import migrate
from app.images import generate
from app.images.providers.local import LocalProvider
from app.queue.worker import Timing
from app.settings import Settings
from tests.support import api_client, wait_for

BEFORE_GENERAL_QUEUE = "0005.status-index-for-finished-jobs"


def apply(url: str, *, up_to: str | None = None, rollback: str | None = None) -> None:
    """Apply migrations (up to `up_to`), or roll back `rollback` and every later one."""
    backend = get_backend(migrate.yoyo_url(url))
    migrations = read_migrations(str(migrate.MIGRATIONS_DIR))
    try:
        with backend.lock():
            if rollback is not None:
                backend.rollback_migrations(
                    # that migration and every later one, which may depend on it
                    backend.to_rollback(migrations.filter(lambda m: m.id >= rollback))
                )
                return
            wanted = migrations if up_to is None else migrations.filter(lambda m: m.id <= up_to)
            backend.apply_migrations(backend.to_apply(wanted))
    finally:
        backend.connection.close()


OLD_JOBS = """
INSERT INTO jobs (id, status, num_images, animal, error, attempts, max_attempts, worker_id,
                  lease_expires_at, started_at, finished_at, updated_at, created_at)
VALUES
    ('00000000-0000-4000-8000-000000000001', 'pending', 2, 'owl', NULL, 0, 3, NULL, NULL, NULL, NULL,
     now() - interval '5 s', now() - interval '5 s'),
    ('00000000-0000-4000-8000-000000000002', 'processing', 2, 'cat', NULL, 1, 3, 'old-1-dead',
     now() - interval '1 s', now() - interval '40 s', NULL, now() - interval '40 s', now() - interval '41 s'),
    ('00000000-0000-4000-8000-000000000003', 'completed', 2, 'fox', NULL, 1, 3, 'old-1-gone',
     NULL, now() - interval '2 h', now() - interval '119 min', now() - interval '119 min', now() - interval '2 h'),
    ('00000000-0000-4000-8000-000000000004', 'failed', 1, 'pig', 'the model is on fire', 3, 3, 'old-1-gone',
     NULL, now() - interval '3 h', now() - interval '179 min', now() - interval '179 min', now() - interval '3 h'),
    ('00000000-0000-4000-8000-000000000005', 'canceled', 3, 'owl', NULL, 0, 3, NULL, NULL, NULL,
     now() - interval '4 h', now() - interval '4 h', now() - interval '5 h')
"""


def expected_json(row: asyncpg.Record, indexes: list[int]) -> dict:
    """What the API before the general queue answered for a job row."""
    return {
        "jobId": str(row["id"]),
        "status": row["status"],
        "numImages": row["num_images"],
        "animal": row["animal"],
        "imageUrls": [f"http://menagerie.test/images/{row['id']}/{index}.png" for index in indexes],
        "createdAt": row["created_at"].isoformat(),
        "updatedAt": row["updated_at"].isoformat(),
        "error": row["error"],
        "attempts": row["attempts"],
        "startedAt": row["started_at"].isoformat() if row["started_at"] else None,
        "finishedAt": row["finished_at"].isoformat() if row["finished_at"] else None,
        # Added with providers: a job made before them was the local renderer's, with no prompt.
        "prompt": None,
        "provider": "local",
        "model": None,
        "webhook": None,
        "webhookEvents": None,
    }


async def test_a_database_with_jobs_upgrades_in_place(empty_database_url, start_worker):
    """After the upgrade: finished jobs and their images read as before; the pending job runs;
    the processing job of a worker that is gone is reclaimed when its lease lapses and
    completes with its stored image kept."""
    url = empty_database_url
    conn = await old_database(url)
    try:
        old = {row["id"]: row for row in await conn.fetch("SELECT * FROM jobs")}
        images = {
            row["job_id"]: row["indexes"]
            for row in await conn.fetch(
                "SELECT job_id, array_agg(idx ORDER BY idx) AS indexes FROM images GROUP BY 1"
            )
        }

        apply(url)
        settings = Settings(
            _env_file=None, database_url=url, public_base_url="http://menagerie.test", auth="none"
        )
        async with api_client(settings) as http:
            for job_id, row in old.items():
                if row["status"] not in ("completed", "failed", "canceled"):
                    continue
                now = (await http.get(f"/generations/{job_id}")).json()
                then = expected_json(row, images.get(job_id, []))
                # Completions stamped updated_at and finished_at with two clock reads; finished
                # jobs now show their finished_at as updatedAt: the same to the microsecond or so.
                assert abs(_moment(now.pop("updatedAt")) - _moment(then.pop("updatedAt"))) < timedelta(
                    milliseconds=1
                )
                assert now == then
            served = await http.get("/images/00000000-0000-4000-8000-000000000003/1.png")
            assert served.status_code == 200 and served.content == PNG
            listed = [job["jobId"] for job in (await http.get("/generations")).json()]
            assert listed == [
                str(job_id) for job_id in sorted(old, key=lambda key: old[key]["created_at"], reverse=True)
            ]

        async with asyncpg.create_pool(url, min_size=1, max_size=4) as pool:
            provider = LocalProvider(delay=0, size=64)
            timing = Timing(poll_interval=3600, lease_seconds=0.6, shutdown_grace=0)
            await start_worker(generate.kind(pool, provider), timing=timing, url=url)

            async def both_completed() -> bool:
                rows = await pool.fetch(
                    "SELECT status FROM jobs WHERE id IN ('00000000-0000-4000-8000-000000000001', "
                    "'00000000-0000-4000-8000-000000000002')"
                )
                return [row["status"] for row in rows] == ["completed", "completed"]

            await wait_for(both_completed, timeout=15)
            kept = await pool.fetchval(
                "SELECT png FROM images WHERE job_id = '00000000-0000-4000-8000-000000000002' AND idx = 0"
            )
            assert kept == PNG, "the image stored by the gone worker was kept, not made again"
            attempts = await pool.fetchval(
                "SELECT attempts FROM jobs WHERE id = '00000000-0000-4000-8000-000000000002'"
            )
            assert attempts == 2
    finally:
        await conn.close()


async def test_the_upgrade_rolls_back_and_applies_again(empty_database_url):
    """Rolling migration 0006 back restores the jobs table with every job as it was, images
    included; applying it again gives the same jobs."""
    url = empty_database_url
    conn = await old_database(url)
    try:
        before = [
            dict(row)
            for row in await conn.fetch("SELECT id, status, animal, num_images FROM jobs ORDER BY id")
        ]
        apply(url)
        upgraded = await conn.fetch(
            "SELECT j.id, j.status, g.animal, g.num_images FROM jobs j "
            "JOIN generations g ON g.job_id = j.id ORDER BY j.id"
        )
        assert [dict(row) for row in upgraded] == before
        apply(url, rollback="0006.general-queue")
        assert [
            dict(row)
            for row in await conn.fetch("SELECT id, status, animal, num_images FROM jobs ORDER BY id")
        ] == before
        assert await conn.fetchval("SELECT count(*) FROM images") == 3
        apply(url)
        assert [
            dict(row)
            for row in await conn.fetch(
                "SELECT j.id, j.status, g.animal, g.num_images FROM jobs j "
                "JOIN generations g ON g.job_id = j.id ORDER BY j.id"
            )
        ] == before
    finally:
        await conn.close()


PNG = bytes.fromhex("89504e470d0a1a0a") + b"stored before the upgrade"


async def old_database(url: str) -> asyncpg.Connection:
    """A database at the head before the general queue, with five jobs and three images."""
    apply(url, up_to=BEFORE_GENERAL_QUEUE)
    conn = await asyncpg.connect(url)
    await conn.execute(OLD_JOBS)
    await conn.execute(
        "INSERT INTO images (job_id, idx, png, sha256) VALUES "
        "('00000000-0000-4000-8000-000000000003', 0, $1, 'a'), ('00000000-0000-4000-8000-000000000003', 1, $1, 'b'),"
        "('00000000-0000-4000-8000-000000000002', 0, $1, 'c')",
        PNG,
    )
    return conn


def _moment(text: str):
    from datetime import datetime

    return datetime.fromisoformat(text)
