"""A webhook delivery's pickup: from the commit of a job's status change to its receiver being
called, with a fast receiver (it answers 204 at once).

A real worker process (`python -m app worker`, WORKER_KINDS=webhook) delivers; this process
creates generations with a webhook (events ["completed"]), then cancels them one by one (the
status change: job_cancel, whose statement also enqueues the delivery), and a receiver in
this process on a local port notes when each delivery arrives. Two phases: ``idle`` (one
change every 200 ms: each delivery finds the worker asleep) and ``rate`` (100 changes a
second).

``--measure outbox``: what the outbox costs generations that ask for no webhook. Every
statement that changes a generation calls job_events_add, which now also looks for a webhook
(webhook_outbox). On one connection, batches of 100 generations are created, claimed and
completed, with job_events_add as migration 0010 made it and as it was before (its
definition swapped in place), alternating per round; milliseconds per 100 jobs, medians.

Usage::

    python bench/webhooks.py [--quick]
    python bench/webhooks.py --measure outbox [--quick]

Prints one JSON line with the figures. Latency is client clock, same machine: from right after
the cancel committed to the receiver's handler being called with the verified delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.peers import DEFAULT_DSN_ADMIN, fresh_database, percentile  # noqa: E402

SECRET = "whsec_" + base64.b64encode(b"bench-webhook-secret-of-32-bytes").decode()
IDLE = (100, 20)  # changes (full, quick), one every IDLE_INTERVAL_S
IDLE_INTERVAL_S = 0.2
RATE = (1000, 200)  # changes at RATE_PER_S
RATE_PER_S = 100


class Receiver:
    """A fast receiver: notes each delivery's arrival (job id -> time) and answers 204."""

    def __init__(self, port: int) -> None:
        import uvicorn
        from standardwebhooks import Webhook

        self.arrived: dict[UUID, float] = {}
        self.port = port
        verifier = Webhook(SECRET)

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            at = time.time()
            headers = {key.decode(): value.decode() for key, value in scope["headers"]}
            delivery = verifier.verify(body, headers)
            self.arrived[UUID(delivery["jobId"])] = at
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        )


async def changes(
    pool: asyncpg.Pool, job_ids: list[UUID], *, per_second: float, receiver: Receiver
) -> list[float]:
    """Cancel `job_ids` at `per_second` each (one task each); the latencies in ms, commit to
    arrival, once every delivery has arrived."""
    from app.images import generations

    committed: dict[UUID, float] = {}

    async def one(job_id: UUID) -> None:
        await generations.cancel(pool, job_id=job_id)
        committed[job_id] = time.time()

    began = time.perf_counter()
    tasks = []
    for i, job_id in enumerate(job_ids):
        delay = began + i / per_second - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(job_id)))
    await asyncio.gather(*tasks)
    deadline = time.time() + 30
    while any(job_id not in receiver.arrived for job_id in job_ids) and time.time() < deadline:
        await asyncio.sleep(0.05)
    return [
        (receiver.arrived[job_id] - at) * 1000
        for job_id, at in committed.items()
        if job_id in receiver.arrived
    ]


def figures(values: list[float], count: int) -> dict[str, Any]:
    return {
        "changes": count,
        "delivered": len(values),
        "p50_ms": round(percentile(values, 50), 3),
        "p99_ms": round(percentile(values, 99), 3),
        "max_ms": round(max(values), 3) if values else None,
    }


async def measure(*, quick: bool, dsn_admin: str) -> dict[str, Any]:
    from app import migrate
    from app.images import generations

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    receiver = Receiver(port)
    serving = asyncio.create_task(receiver.server.serve())
    url = f"http://127.0.0.1:{receiver.port}/hook"
    async with fresh_database(dsn_admin, "webhooks") as dsn:
        await asyncio.to_thread(migrate.apply, dsn)
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app",
            "worker",
            cwd=ROOT,
            env={
                **os.environ,
                "DATABASE_URL": dsn,
                "WORKER_KINDS": "webhook",
                "PUBLIC_BASE_URL": "http://menagerie.bench",
                "WEBHOOK_SECRET": SECRET,
                "WEBHOOK_ALLOW_PRIVATE": "true",
                "LOG_LEVEL": "WARNING",
                "AUTO_MIGRATE": "false",
            },
        )
        pool = await asyncpg.create_pool(dsn, min_size=8, max_size=8)
        try:
            while not await pool.fetchval("SELECT count(*) FROM workers"):
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            idle_count, rate_count = (IDLE[1], RATE[1]) if quick else (IDLE[0], RATE[0])
            request = generations.Request(
                1, "cat", 3, webhook=url, webhook_events=("completed",), webhook_max_attempts=6
            )
            idle_jobs = [job.id for job in await generations.create_many(pool, [request] * idle_count)]
            rate_jobs = [job.id for job in await generations.create_many(pool, [request] * rate_count)]
            idle = await changes(pool, idle_jobs, per_second=1 / IDLE_INTERVAL_S, receiver=receiver)
            rate = await changes(pool, rate_jobs, per_second=RATE_PER_S, receiver=receiver)
        finally:
            await pool.close()
            worker.terminate()
            await worker.wait()
            receiver.server.should_exit = True
            await serving
    return {
        f"idle (one change every {IDLE_INTERVAL_S * 1000:g} ms)": figures(idle, len(idle_jobs)),
        f"rate ({RATE_PER_S} changes/s)": figures(rate, len(rate_jobs)),
    }


OUTBOX_CALL = "    PERFORM webhook_outbox(ids, versions, types, datas);\n"
OUTBOX_ROUNDS = (8, 2)
OUTBOX_BATCHES = (20, 5)  # batches of 100 per side and round


async def outbox_cost(*, quick: bool, dsn_admin: str) -> dict[str, Any]:
    from app import migrate
    from app.images import generations
    from app.queue import jobs as queue

    rounds, batches = (
        (OUTBOX_ROUNDS[1], OUTBOX_BATCHES[1]) if quick else (OUTBOX_ROUNDS[0], OUTBOX_BATCHES[0])
    )
    timings: dict[str, dict[str, list[float]]] = {
        side: {"create": [], "claim": [], "complete": []} for side in ("with outbox", "without")
    }
    async with fresh_database(dsn_admin, "outbox") as dsn:
        await asyncio.to_thread(migrate.apply, dsn)
        conn = await asyncpg.connect(dsn)
        try:
            current = await conn.fetchval(
                "SELECT pg_get_functiondef('job_events_add(uuid[],integer[],text[],text[],jsonb[])'::regprocedure)"
            )
            assert OUTBOX_CALL in current, "job_events_add does not call webhook_outbox"
            definitions = {"with outbox": current, "without": current.replace(OUTBOX_CALL, "")}
            request = generations.Request(1, "cat", 3)
            for round_ in range(rounds):
                order = list(definitions) if round_ % 2 == 0 else list(reversed(definitions))
                for side in order:
                    await conn.execute(definitions[side])
                    for _ in range(batches):
                        began = time.perf_counter()
                        await generations.create_many(conn, [request] * 100)
                        created = time.perf_counter()
                        claimed = await queue.claim(
                            conn, worker_id="bench", wanted={"generate": 100}, lease_seconds=60
                        )
                        done = time.perf_counter()
                        await queue.complete_many(
                            conn, worker_id="bench", jobs=[(job.id, job.attempts) for job in claimed]
                        )
                        ended = time.perf_counter()
                        assert len(claimed) == 100
                        timings[side]["create"].append((created - began) * 1000)
                        timings[side]["claim"].append((done - created) * 1000)
                        timings[side]["complete"].append((ended - done) * 1000)
            await conn.execute(definitions["with outbox"])
        finally:
            await conn.close()
    figures: dict[str, Any] = {
        side: {step: round(statistics.median(values), 3) for step, values in steps.items()}
        for side, steps in timings.items()
    }
    figures["ratio with/without (sum of medians)"] = round(
        sum(figures["with outbox"].values()) / sum(figures["without"].values()), 3
    )
    figures["batches of 100 per side"] = rounds * batches
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--measure", choices=("delivery", "outbox"), default="delivery")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dsn-admin", default=os.environ.get("BENCH_DSN_ADMIN", DEFAULT_DSN_ADMIN))
    args = parser.parse_args()
    import uvloop

    run = outbox_cost if args.measure == "outbox" else measure
    print(json.dumps(uvloop.run(run(quick=args.quick, dsn_admin=args.dsn_admin))))


if __name__ == "__main__":
    main()
