"""Scale: does claiming and listing stay as fast with a million finished jobs in the table?

Two databases side by side, both with the same few thousand pending jobs: one with nothing
else, one with N finished jobs added (1,000,000 in full mode). Times claiming 10 due jobs (the
worker's statement), the first page of GET /generations (50 jobs, newest first) and the page
after it (keyset cursor), through the project's own query functions, measured from the
client (asyncpg). The two databases are measured in alternation, a few calls at a time, so
that the machine's drift and noise fall on both alike; each figure is the median of all its
calls. Prints one JSON line with both sets and their ratios.

Usage::

    python bench/scale.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peers import DEFAULT_DSN_ADMIN, fresh_database  # noqa: E402

from app import migrate  # noqa: E402
from app.images import generations  # noqa: E402
from app.queue import jobs  # noqa: E402

FINISHED = (1_000_000, 50_000)  # full, quick
ROUNDS = (60, 10)  # full, quick: alternations between the two databases
CALLS_PER_ROUND = 5
PENDING = 4_000  # more than warming up and all the rounds' claims take ((5 + ROUNDS * CALLS_PER_ROUND) * 10)


def operations(pool: asyncpg.Pool, after: tuple[Any, Any]) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "claim_10_ms": lambda: jobs.claim(pool, worker_id="bench", wanted={"generate": 10}, lease_seconds=30),
        "list_first_page_ms": lambda: generations.list_page(pool, status=None, after=None, limit=51),
        "list_next_page_ms": lambda: generations.list_page(pool, status=None, after=after, limit=51),
    }


@contextlib.asynccontextmanager
async def database(dsn_admin: str) -> AsyncIterator[asyncpg.Pool]:
    """A fresh migrated database (dropped afterwards) and a small pool on it."""
    async with fresh_database(dsn_admin, "scale") as dsn:
        await asyncio.to_thread(migrate.apply, dsn)
        async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool:
            yield pool


async def add_finished(pool: asyncpg.Pool, count: int) -> None:
    """`count` completed generations, created over the day before the pending ones."""
    await pool.execute(
        "WITH finished AS (SELECT gen_random_uuid() AS id, now() - interval '1 day' + n * interval '1 millisecond' AS t "
        "                  FROM generate_series(1, $1) AS n), "
        "described AS (INSERT INTO generations (job_id, animal, num_images, created_at) "
        "              SELECT id, 'cat', 1, t FROM finished) "
        "INSERT INTO finished_jobs (id, kind, status, attempts, max_attempts, created_at, started_at, finished_at, version) "
        "SELECT id, 'generate', 'completed', 1, 3, t, t, t, 3 FROM finished",
        count,
    )


async def add_pending(pool: asyncpg.Pool) -> tuple[Any, Any]:
    """The pending jobs both databases share; returns the cursor after the first page."""
    await generations.create_many(pool, [generations.Request(1, "cat", 3)] * PENDING)
    await pool.execute("VACUUM ANALYZE")
    first = await generations.list_page(pool, status=None, after=None, limit=51)
    return (first[49].created_at, first[49].id)


async def interleaved(
    pools: dict[str, asyncpg.Pool], cursors: dict[str, Any], rounds: int
) -> dict[str, dict[str, float]]:
    """Median milliseconds per database and operation, the databases taking turns."""
    ops = {label: operations(pool, cursors[label]) for label, pool in pools.items()}
    for label in pools:  # warm plans and caches
        for call in ops[label].values():
            for _ in range(5):
                await call()
    samples: dict[str, dict[str, list[float]]] = {label: {op: [] for op in ops[label]} for label in pools}
    order = list(pools)
    for _ in range(rounds):
        order.reverse()  # neither database always goes first
        for label in order:
            for op, call in ops[label].items():
                for _ in range(CALLS_PER_ROUND):
                    started = time.perf_counter()
                    await call()
                    samples[label][op].append((time.perf_counter() - started) * 1000)
    return {
        label: {op: round(statistics.median(values), 3) for op, values in by_op.items()}
        for label, by_op in samples.items()
    }


async def measure(*, quick: bool, dsn_admin: str) -> dict[str, Any]:
    finished = FINISHED[1 if quick else 0]
    async with database(dsn_admin) as empty, database(dsn_admin) as loaded:
        started = time.perf_counter()
        await add_finished(loaded, finished)
        fill_s = time.perf_counter() - started
        cursors = {"empty": await add_pending(empty), "loaded": await add_pending(loaded)}
        result = await interleaved({"empty": empty, "loaded": loaded}, cursors, ROUNDS[1 if quick else 0])
    empty_figures, loaded_figures = result["empty"], result["loaded"]
    return {
        "measure": "scale",
        "quick": quick,
        "finished_jobs": finished,
        "fill_seconds": round(fill_s, 1),
        "calls_per_figure": ROUNDS[1 if quick else 0] * CALLS_PER_ROUND,
        "figures": {
            "empty": empty_figures,
            "loaded": loaded_figures,
            "ratio": {key: round(loaded_figures[key] / empty_figures[key], 2) for key in empty_figures},
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
