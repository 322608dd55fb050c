"""How fast GET /generations/events (the dashboard's one stream of every job) delivers changes,
with 1 page following and with many.

A real server.py on a fresh database, no worker. The bench commits generations one at a time at
a steady pace (each commit records a `created` event) and notes when each committed; every
follower (an HTTP client holding the stream) notes when each job's event arrived. Per number of
followers: delivery latency (commit to arrival) p50 and p99, the events every follower received
(all of them, or the figures are void) and the server's CPU per delivered event. Followers run
in this process, on the same machine as the server and PostgreSQL (2 cores here).

Usage::

    python bench/feed.py [--quick] [--followers 1,50]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from peers import DEFAULT_DSN_ADMIN, fresh_database, percentile
from web import cpu_seconds, server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import migrate  # noqa: E402
from app.images import generations  # noqa: E402

JOBS = (300, 40)  # full, quick
INTERVAL_S = 0.01


async def follow(base: str, arrived: dict[str, float], ready: asyncio.Event) -> None:
    """Hold the stream; note when each job's first event arrives."""
    async with (
        httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(10, read=None)) as http,
        http.stream("GET", "/generations/events") as response,
    ):
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
                if event == "ready":
                    ready.set()
            elif line.startswith("data: ") and event != "ready":
                job_id = json.loads(line[6:])["jobId"]
                arrived.setdefault(job_id, time.perf_counter())


async def round_of(base: str, pid: int, dsn: str, followers: int, jobs: int) -> dict[str, Any]:
    arrivals: list[dict[str, float]] = [{} for _ in range(followers)]
    readies = [asyncio.Event() for _ in range(followers)]
    tasks = [
        asyncio.create_task(follow(base, arrived, ready))
        for arrived, ready in zip(arrivals, readies, strict=True)
    ]
    committed: dict[str, float] = {}
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        await asyncio.wait_for(asyncio.gather(*(ready.wait() for ready in readies)), 30)
        cpu_before = cpu_seconds(pid)
        for _ in range(jobs):
            [job] = await generations.create_many(pool, [generations.Request(1, "owl", 3)])
            committed[str(job.id)] = time.perf_counter()
            await asyncio.sleep(INTERVAL_S)
        deadline = time.perf_counter() + 30
        while any(len(arrived) < jobs for arrived in arrivals) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        cpu = cpu_seconds(pid) - cpu_before
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pool.close()
    latencies = [
        (arrived[job_id] - at) * 1000
        for arrived in arrivals
        for job_id, at in committed.items()
        if job_id in arrived
    ]
    delivered = sum(len(arrived) for arrived in arrivals)
    return {
        "followers": followers,
        "jobs": jobs,
        "events_delivered": delivered,
        "events_expected": jobs * followers,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "server_cpu_us_per_event": round(cpu / max(delivered, 1) * 1e6, 1),
    }


async def measure(*, quick: bool, followers: list[int], dsn_admin: str) -> dict[str, Any]:
    jobs = JOBS[1 if quick else 0]
    rounds = []
    for count in followers:
        async with fresh_database(dsn_admin, "feed") as dsn:
            await asyncio.to_thread(migrate.apply, dsn)
            async with server(dsn, {"DB_POOL_SIZE": "10"}) as served:
                rounds.append(await round_of(served.base, served.pid, dsn, count, jobs))
    return {"measure": "feed", "quick": quick, "figures": {f"followers_{r['followers']}": r for r in rounds}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--followers", default="1,50", help="comma list of follower counts")
    parser.add_argument("--dsn-admin", default=DEFAULT_DSN_ADMIN)
    args = parser.parse_args()
    counts = [int(part) for part in args.followers.split(",")]
    with contextlib.suppress(KeyboardInterrupt):
        print(json.dumps(asyncio.run(measure(quick=args.quick, followers=counts, dsn_admin=args.dsn_admin))))


if __name__ == "__main__":
    main()
