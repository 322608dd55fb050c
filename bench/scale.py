"""Scale: does claiming and listing stay as fast with a million finished jobs in the table?

Times, on one database, first nearly empty and then with N finished jobs added (1,000,000 in
full mode): claiming 10 due jobs (the worker's statement), the first page of GET
/generations (50 jobs, newest first) and the page after it (keyset cursor). Each figure is
the median of many calls, measured from the client (asyncpg) through the project's own
query functions. Prints one JSON line with both sets and their ratios.

Usage::

    python bench/scale.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import jobs, migrate, queue  # noqa: E402
from peers import dsn_for_database  # noqa: E402

DEFAULT_DSN_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
FINISHED = (1_000_000, 50_000)  # full, quick
CALLS = 200


async def timed(call: Callable[[], Awaitable[Any]], calls: int = CALLS) -> float:
    """Median milliseconds of `calls` calls (after a few to warm plans and caches)."""
    for _ in range(5):
        await call()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples), 3)


async def figures(pool: asyncpg.Pool) -> dict[str, float]:
    await pool.execute("INSERT INTO jobs (num_images, animal) SELECT 1, 'cat' FROM generate_series(1, 1200)")
    await pool.execute("VACUUM ANALYZE jobs")

    async def claim() -> None:
        await queue.claim(pool, worker_id="bench", limit=10, lease_seconds=30)

    first = await jobs.list_page(pool, status=None, after=None, limit=51)
    after = (first[49].created_at, first[49].id)
    return {
        "claim_10_ms": await timed(claim, calls=100),
        "list_first_page_ms": await timed(lambda: jobs.list_page(pool, status=None, after=None, limit=51)),
        "list_next_page_ms": await timed(lambda: jobs.list_page(pool, status=None, after=after, limit=51)),
    }


async def measure(*, quick: bool, dsn_admin: str) -> dict[str, Any]:
    name = f"bench_scale_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(dsn_admin)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = dsn_for_database(dsn_admin, name)
    try:
        await asyncio.to_thread(migrate.apply, dsn)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:
            empty = await figures(pool)
            finished = FINISHED[1 if quick else 0]
            started = time.perf_counter()
            await pool.execute(
                "INSERT INTO jobs (num_images, animal, status, attempts, created_at, updated_at, "
                "started_at, finished_at) "
                "SELECT 1, 'cat', 'completed', 1, "
                "t, t, t, t FROM generate_series(1, $1) AS n, "
                "LATERAL (SELECT now() - interval '1 day' + n * interval '1 millisecond') AS at (t)",
                finished,
            )
            fill_s = time.perf_counter() - started
            await pool.execute("UPDATE jobs SET status = 'completed', finished_at = now() WHERE status <> 'completed' AND status <> 'failed'")
            loaded = await figures(pool)
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return {
        "measure": "scale",
        "quick": quick,
        "finished_jobs": finished,
        "fill_seconds": round(fill_s, 1),
        "figures": {
            "empty": empty,
            "loaded": loaded,
            "ratio": {key: round(loaded[key] / empty[key], 2) for key in empty},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dsn-admin", default=os.environ.get("BENCH_DSN_ADMIN", DEFAULT_DSN_ADMIN))
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(quick=args.quick, dsn_admin=args.dsn_admin))), flush=True)


if __name__ == "__main__":
    main()
