"""Where a drained job's database time goes: per 100 jobs, menagerie's claim and completion
statements beside the bare queue's claim and delete (bench/peers.py's ``BarePeer``).

Each side gets a fresh database holding 20,000 due no-op jobs (2,000 with ``--quick``),
filled the way the drain measure fills it. Then, on one connection per side, batches of 100
are claimed and finished one statement after the other (nothing overlaps, no worker, no
Python handler), until the table is empty. menagerie's claim runs on a connection with the
claiming session a worker uses (``app.db.CLAIM_SESSION``: commits without waiting for the
WAL flush) and its completion on an ordinary, durable one, as in production (every other
batch completes without the flush too, to show what the flush costs); the bare queue
claims and deletes with ``synchronous_commit = off`` throughout. The figures are medians over
the batches, in milliseconds per 100 jobs.

Usage::

    python bench/breakdown.py [--quick]

Prints one JSON line. The worker's Python per job is read from the drain measure's
``worker_cpu_s`` (bench/run_all.py puts both in bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
from peers import DEFAULT_DSN_ADMIN, BarePeer, MenageriePeer, fresh_database, job_payload

ROOT = Path(__file__).resolve().parent.parent
JOBS = (20_000, 2_000)  # full, quick
BATCH = 100


async def fill(peer: MenageriePeer | BarePeer, dsn: str, jobs: int) -> None:
    await peer.install(dsn)
    async with peer.producer(dsn, pool_size=1) as producer:
        for start in range(0, jobs, peer.bulk_chunk):
            count = min(peer.bulk_chunk, jobs - start)
            await producer.enqueue_many([job_payload(start + i) for i in range(count)])


def per_100(samples: list[float], sizes: list[int]) -> float:
    """Median milliseconds per 100 jobs over full batches."""
    full = [seconds for seconds, size in zip(samples, sizes, strict=True) if size == BATCH]
    return round(statistics.median(full) * 1000, 3)


async def menagerie(dsn_admin: str, jobs: int) -> dict[str, Any]:
    from app import db
    from app.queue import jobs as queue

    peer = MenageriePeer({})
    async with fresh_database(dsn_admin, "breakdown_menagerie") as dsn:
        await fill(peer, dsn, jobs)
        claims, claim_sizes, completions, sizes = [], [], [], []
        unflushed, unflushed_sizes = [], []
        claiming = await asyncpg.connect(dsn, server_settings=db.CLAIM_SESSION)
        durable = await asyncpg.connect(dsn)
        unsynced = await asyncpg.connect(dsn, server_settings={"synchronous_commit": "off"})
        try:
            for batch in itertools.count():
                started = time.perf_counter()
                claimed = await queue.claim(
                    claiming, worker_id="breakdown", wanted={peer.kind: BATCH}, lease_seconds=60
                )
                claimed_at = time.perf_counter()
                if not claimed:
                    break
                # Every other batch completes without waiting for the WAL flush: what the
                # statement costs apart from the flush a durable completion waits for.
                finishing = unsynced if batch % 2 else durable
                await queue.complete_many(
                    finishing, worker_id="breakdown", jobs=[(job.id, job.attempts) for job in claimed]
                )
                claims.append(claimed_at - started)
                claim_sizes.append(len(claimed))
                (unflushed if batch % 2 else completions).append(time.perf_counter() - claimed_at)
                (unflushed_sizes if batch % 2 else sizes).append(len(claimed))
        finally:
            for conn in (claiming, durable, unsynced):
                await conn.close()
    return {
        "claim_ms": per_100(claims, claim_sizes),
        "finish_ms": per_100(completions, sizes),
        "finish_unflushed_ms": per_100(unflushed, unflushed_sizes),
        "jobs": sum(sizes) + sum(unflushed_sizes),
    }


async def bare(dsn_admin: str, jobs: int) -> dict[str, Any]:
    peer = BarePeer({})
    async with fresh_database(dsn_admin, "breakdown_bare") as dsn:
        await fill(peer, dsn, jobs)
        claims, deletes, sizes = [], [], []
        conn = await asyncpg.connect(dsn, server_settings={"synchronous_commit": "off"})
        try:
            while True:
                started = time.perf_counter()
                rows = await conn.fetch(peer.claim, BATCH)
                claimed_at = time.perf_counter()
                if not rows:
                    break
                await conn.execute(peer.delete, [row["id"] for row in rows])
                claims.append(claimed_at - started)
                deletes.append(time.perf_counter() - claimed_at)
                sizes.append(len(rows))
        finally:
            await conn.close()
    return {"claim_ms": per_100(claims, sizes), "finish_ms": per_100(deletes, sizes), "jobs": sum(sizes)}


async def measure(dsn_admin: str, quick: bool) -> dict[str, Any]:
    jobs = JOBS[1 if quick else 0]
    ours = await menagerie(dsn_admin, jobs)
    floor = await bare(dsn_admin, jobs)
    return {
        "measure": "breakdown",
        "quick": quick,
        "figures": {
            "menagerie": ours,
            "bare": floor,
            "claim_vs_bare": round(ours["claim_ms"] / floor["claim_ms"], 2),
            "finish_vs_bare": round(ours["finish_ms"] / floor["finish_ms"], 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dsn-admin", default=os.environ.get("BENCH_DSN_ADMIN", DEFAULT_DSN_ADMIN))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    print(json.dumps(asyncio.run(measure(args.dsn_admin, args.quick))), flush=True)


if __name__ == "__main__":
    main()
