"""A kind of job that is not a generation (tests/chores.py), run by a real worker process built
from the queue alone: claim, lease renewal, retries, timeout, failure, cancel, hand-back, and
not one module of the image domain or the HTTP API loaded."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import asyncpg
import httpx

from app import queue
from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent


async def chore(
    pool: asyncpg.Pool, *plan: str, max_attempts: int = 3, kind: str = "chore", args=None
) -> UUID:
    [job] = await queue.enqueue(
        pool,
        [
            queue.NewJob(
                kind,
                args={"plan": list(plan)} if args is None else args,
                max_attempts=max_attempts,
                watched=True,
            )
        ],
    )
    return job


async def finished(pool: asyncpg.Pool, job_id: UUID) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM finished_jobs WHERE id = $1", job_id)


async def events(pool: asyncpg.Pool, job_id: UUID) -> list[tuple[str, object]]:
    rows = await pool.fetch(
        "SELECT type, data, at FROM job_events WHERE job_id = $1 ORDER BY version", job_id
    )
    return [(row["type"], json.loads(row["data"]) if row["data"] else None, row["at"]) for row in rows]


def worker_counts(text: str) -> dict[tuple[str, str], float]:
    return {
        (kind, event): float(value)
        for event, kind, value in re.findall(
            r'menagerie_worker_jobs_total\{event="(\w+)",kind="(\w+)"\} (\S+)', text
        )
    }


async def test_a_second_kind_runs_through_a_real_worker_with_no_image_code(
    database_url, pool, spawn, tmp_path
):
    """A worker process built from the queue and the test kinds alone runs every outcome a
    handler can report (done, retry with the kind's backoff or a given delay, fail, crash,
    timeout), keeps a job running past its lease, stops a canceled one, hands one back at
    SIGTERM, and never imports the image domain or the HTTP API."""
    modules = tmp_path / "modules.json"
    port = free_port()
    env = {
        "DATABASE_URL": database_url,
        "AUTO_MIGRATE": "false",
        "LEASE_SECONDS": "1",
        "SHUTDOWN_GRACE": "0.2",
        "WORKER_POLL_INTERVAL": "3600",
        "WORKER_METRICS_PORT": str(port),
        "CHORE_TIMEOUT": "3s",
        "CHORE_SLOTS": "6",
        "CHORE_WORKER_MODULES": str(modules),
    }
    worker = spawn("tests/chore_worker.py", env=env)
    await wait_for(lambda: pool.fetchval("SELECT count(*) = 1 FROM workers"), timeout=20)

    ok = await chore(pool, "ok")
    retried = await chore(pool, "retry", "ok")
    waited = await chore(pool, "retry-after:1", "ok")
    failed = await chore(pool, "fail")
    crashed = await chore(pool, "crash")
    hung = await chore(pool, "hang", max_attempts=1)
    long = await chore(pool, "sleep:2.5")  # 2.5 leases of 1 s: renewed, never reclaimed
    ticks = await queue.enqueue(pool, [queue.NewJob("tick", args={}) for _ in range(100)])
    [bad_tick] = await queue.enqueue(pool, [queue.NewJob("tick", args={"fail": True})])
    everything = [ok, retried, waited, failed, crashed, hung, long, *ticks, bad_tick]

    async def all_finished() -> bool:
        return await pool.fetchval(
            "SELECT count(*) FROM finished_jobs WHERE id = ANY($1)", everything
        ) == len(everything)

    await wait_for(all_finished, timeout=30, interval=0.1)
    assert (await finished(pool, ok))["status"] == "completed"
    row = await finished(pool, retried)
    assert (row["status"], row["attempts"], row["error"]) == ("completed", 2, None)
    first_run, second_run = [at for kind, _, at in await events(pool, waited) if kind == "started"]
    assert (second_run - first_run).total_seconds() >= 1.0, "Retry(after=1) waits at least a second"
    row = await finished(pool, failed)
    assert (row["status"], row["attempts"], row["error"]) == ("failed", 1, "failed as planned")
    row = await finished(pool, crashed)
    assert (row["status"], row["attempts"]) == ("failed", 3)
    assert row["error"] == "internal error: RuntimeError: crashed as planned"
    row = await finished(pool, hung)
    assert (row["status"], row["error"]) == ("failed", "timed out after 3s")
    row = await finished(pool, long)
    assert (row["status"], row["attempts"]) == ("completed", 1), "the lease was renewed, not reclaimed"
    statuses = await pool.fetch("SELECT status, count(*) FROM finished_jobs WHERE kind = 'tick' GROUP BY 1")
    assert {row["status"]: row["count"] for row in statuses} == {"completed": 100, "failed": 1}

    canceled = await chore(pool, "sleep:10")
    await wait_for(
        lambda: pool.fetchval("SELECT worker_id IS NOT NULL FROM job_queue WHERE id = $1", canceled)
    )
    assert await queue.jobs.cancel(pool, job_id=canceled) == "processing"
    async with httpx.AsyncClient(timeout=2) as http:

        async def stopped_on_the_worker() -> bool:
            counts = worker_counts((await http.get(f"http://127.0.0.1:{port}/metrics")).text)
            return counts.get(("chore", "canceled")) == 1

        await wait_for(stopped_on_the_worker, timeout=5)

    handed = await chore(pool, "sleep:10")
    await wait_for(lambda: pool.fetchval("SELECT worker_id IS NOT NULL FROM job_queue WHERE id = $1", handed))
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 10) == 0
    row = await pool.fetchrow("SELECT worker_id, attempts FROM job_queue WHERE id = $1", handed)
    assert (row["worker_id"], row["attempts"]) == (None, 0), "handed back, its attempt not counted"

    loaded = json.loads(modules.read_text())
    assert "app.queue.worker" in loaded
    assert not [name for name in loaded if name.startswith(("app.images", "app.api", "app.registry"))], loaded


def test_the_queue_core_and_worker_loop_import_no_image_or_http_code():
    """Importing the queue (its statements, worker loop, maintenance and worker process) loads
    nothing of the image domain, the HTTP API or the wiring of kinds."""
    probe = (
        "import sys, app.queue, app.queue.jobs, app.queue.worker, app.queue.maintenance, app.queue.process;"
        "print([m for m in sys.modules if m.startswith(('app.images', 'app.api', 'app.registry', "
        "'app.idempotency', 'app.events', 'app.models', 'starlette'))])"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]", done.stdout
