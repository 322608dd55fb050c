"""Two measures of the queue under a steady load, one worker process each:

* ``mixed``: a fast kind's pickup latency while a slow kind's backlog grows. Phase 1 sends
  only fast jobs; phase 2 the same fast jobs plus a slow kind at a tenth of the rate, whose
  jobs take a second each with two slots, so thousands of them pile up. The fast kind's p50 and
  p99 should not move: each kind has its own slots and its own range of the claim's index.
* ``snapshot``: claim latency at 100 jobs/s, then again while another connection holds a
  transaction open (``BEGIN; SELECT txid_current();`` and idle), which stops VACUUM from
  removing any dead row. The claim reads job_queue's partitions; the maintenance loop
  truncates them (rotation), so the dead rows cannot pile up under it.

* ``wake``: what this machine charges for waking an idle PostgreSQL backend: ``SELECT 1``
  round trips back to back, and after 200 ms of quiet (the gap between jobs of the idle pickup
  measure). Every queue's idle pickup pays it at least once.

Usage::

    python bench/queue_load.py --measure mixed [--quick]
    python bench/queue_load.py --measure snapshot [--quick] [--rotation off]
    python bench/queue_load.py --measure wake

Prints one JSON line with the figures. Latency is client clock, same machine: from right after
the enqueue committed to the handler's first line. Claim time is the worker's own timing of
each claim statement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.peers import DEFAULT_DSN_ADMIN, fresh_database, percentile  # noqa: E402

FAST, SLOW = "fast", "slow"


# The worker process


async def worker_main(dsn: str, slow_seconds: float, rotation: bool) -> None:
    """A real worker (worker loop and maintenance loop, as worker.py runs them) for a fast and
    a slow kind; prints {"event": "ready"}, then at EOF on stdin stops and prints its records."""
    import logging

    from app import db
    from app.queue import jobs as queue
    from app.queue.kinds import Kind
    from app.queue.maintenance import Maintenance, Rotation, queue_rounds
    from app.queue.worker import Timing, Worker

    logging.getLogger().setLevel(logging.WARNING)
    starts: list[tuple[int, float]] = []
    claims: list[tuple[float, float]] = []  # (when, seconds)
    claim = queue.claim

    async def timed_claim(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return await claim(*args, **kwargs)
        finally:
            claims.append((time.time(), time.perf_counter() - began))

    queue.claim = timed_claim  # type: ignore[assignment]

    def fast(job: Any) -> None:
        starts.append((job.args["seq"], time.time()))

    async def slow(job: Any) -> None:
        await asyncio.sleep(slow_seconds)

    pool = await db.create_pool(dsn, size=10, application_name=db.WORKER_APPLICATION)
    worker = Worker(
        pool=pool,
        listen_url=dsn,
        kinds=[Kind(FAST, fast, slots=16), Kind(SLOW, slow, slots=2, timeout=60)],
        timing=Timing(poll_interval=30, lease_seconds=30, shutdown_grace=0),
    )
    maintenance = Maintenance(
        queue_rounds(
            pool,
            lease_seconds=30,
            retention_days=0,
            retention_batch=500,
            forget={FAST: None, SLOW: None},
            rotation=Rotation() if rotation else Rotation(min_dead=2**62),
        )
    )
    maintaining = asyncio.create_task(maintenance.run())
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.listener.connected.wait(), 30)
    print(json.dumps({"event": "ready"}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    worker.stop()
    worker.stop()
    await running
    maintaining.cancel()
    await asyncio.gather(maintaining, return_exceptions=True)
    await pool.close()
    print(json.dumps({"event": "result", "starts": starts, "claims": claims}), flush=True)


# The parent


async def paced(
    pool: asyncpg.Pool, *, rate: float, seconds: float, first_seq: int, slow_every: int | None
) -> dict[int, float]:
    """Enqueue fast jobs at `rate` per second for `seconds` (and, every `slow_every`-th one,
    a slow job too); {seq: time right after the fast job's commit}."""
    from app import queue

    committed: dict[int, float] = {}
    tasks = []

    async def one(seq: int, with_slow: bool) -> None:
        jobs = [queue.NewJob(FAST, args={"seq": seq})]
        await queue.enqueue(pool, jobs)
        committed[seq] = time.time()
        if with_slow:
            await queue.enqueue(pool, [queue.NewJob(SLOW)])

    began = time.perf_counter()
    count = int(rate * seconds)
    for i in range(count):
        delay = began + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        seq = first_seq + i
        tasks.append(asyncio.create_task(one(seq, slow_every is not None and i % slow_every == 0)))
    await asyncio.gather(*tasks)
    return committed


def latencies(committed: dict[int, float], starts: dict[int, float]) -> dict[str, Any]:
    values = [(starts[seq] - at) * 1000 for seq, at in committed.items() if seq in starts]
    return {
        "jobs": len(committed),
        "picked_up": len(values),
        "p50_ms": round(percentile(values, 50), 3),
        "p99_ms": round(percentile(values, 99), 3),
    }


async def wake(dsn_admin: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn_admin)
    try:
        figures = {}
        for label, quiet in (("back_to_back", 0.0), ("after_200ms_idle", 0.2)):
            times = []
            for _ in range(50):
                if quiet:
                    await asyncio.sleep(quiet)
                began = time.perf_counter()
                await conn.fetchval("SELECT 1")
                times.append((time.perf_counter() - began) * 1000)
            figures[f"select1_{label}_p50_ms"] = round(statistics.median(times), 3)
        return figures
    finally:
        await conn.close()


async def measure(name: str, *, quick: bool, dsn_admin: str, rotation: bool = True) -> dict[str, Any]:
    from app import migrate

    if name == "wake":
        return await wake(dsn_admin)
    async with fresh_database(dsn_admin, "load") as dsn:
        await asyncio.to_thread(migrate.apply, dsn)
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--worker",
            "--dsn",
            dsn,
            "--rotation",
            "on" if rotation else "off",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=256 * 1024 * 1024,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert worker.stdin is not None and worker.stdout is not None
        ready = json.loads(await asyncio.wait_for(worker.stdout.readline(), 60))
        assert ready["event"] == "ready", ready
        pool = await asyncpg.create_pool(dsn, min_size=8, max_size=8)
        holder = await asyncpg.connect(dsn)
        phases: dict[str, tuple[float, float, dict[int, float]]] = {}
        try:
            if name == "mixed":
                seconds = 2.0 if quick else 20.0
                began = time.time()
                alone = await paced(pool, rate=300, seconds=seconds, first_seq=0, slow_every=None)
                phases["fast alone"] = (began, time.time(), alone)
                began = time.time()
                mixed = await paced(pool, rate=300, seconds=seconds, first_seq=10**7, slow_every=9)
                phases["fast beside a slow backlog"] = (began, time.time(), mixed)
            else:
                seconds = 4.0 if quick else 180.0
                began = time.time()
                clean = await paced(pool, rate=100, seconds=seconds, first_seq=0, slow_every=None)
                phases["clean"] = (began, time.time(), clean)
                await holder.execute("BEGIN")
                await holder.fetchval("SELECT txid_current()")
                began = time.time()
                held = await paced(pool, rate=100, seconds=seconds, first_seq=10**7, slow_every=None)
                phases["old snapshot held"] = (began, time.time(), held)
                await holder.execute("ROLLBACK")
            await asyncio.sleep(1.0)
            backlog = await pool.fetchval("SELECT count(*) FROM job_queue WHERE kind = $1", SLOW)
        finally:
            worker.stdin.close()
            line = await asyncio.wait_for(worker.stdout.readline(), 120)
            await worker.wait()
            await holder.close()
            await pool.close()
    result = json.loads(line)
    starts = {seq: at for seq, at in result["starts"]}
    figures: dict[str, Any] = {}
    for phase, (began, ended, committed) in phases.items():
        claim_ms = [seconds * 1000 for at, seconds in result["claims"] if began <= at <= ended]
        figures[phase] = {
            **latencies(committed, starts),
            "claims": len(claim_ms),
            "claim_p50_ms": round(statistics.median(claim_ms), 3) if claim_ms else None,
        }
    if name == "mixed":
        figures["slow backlog at the end"] = backlog
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--measure", choices=("mixed", "snapshot", "wake"))
    parser.add_argument(
        "--rotation", choices=("on", "off"), default="on", help="the queue's partition rotation"
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dsn-admin", default=os.environ.get("BENCH_DSN_ADMIN", DEFAULT_DSN_ADMIN))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop

    if args.worker:
        uvloop.run(worker_main(args.dsn, slow_seconds=1.0, rotation=args.rotation == "on"))
        return
    rotation = args.rotation == "on"
    figures = uvloop.run(measure(args.measure, quick=args.quick, dsn_admin=args.dsn_admin, rotation=rotation))
    print(
        json.dumps(
            {"measure": args.measure, "quick": args.quick, "rotation": args.rotation, "figures": figures}
        )
    )


if __name__ == "__main__":
    main()
