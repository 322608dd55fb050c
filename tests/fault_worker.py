"""A real worker process for the fault tests: the project's own worker loop (signals, leases,
retries, hand-back), with a handler that first records each run in the test database's
`handler_runs` table, so a test can count per job how often the handler ran.

FAULT_HANDLER=generation (default) then runs the real generation; FAULT_HANDLER=dice instead
succeeds, fails transiently or fails permanently at random (FAULT_FAIL_RATE);
FAULT_HANDLER=quiet first waits FAULT_QUIET_SECONDS without writing anything, then records
its run and generates.
"""

import asyncio
import os
import random
import uuid

import asyncpg
import uvloop

from app import db, settings
from app.models import Job
from app.process import prepare
from app.queue import Handler, JobFailed
from app.settings import Settings
from app.worker import generation_handler, serve


def recording_handler(pool: asyncpg.Pool, config: Settings) -> Handler:
    kind = os.environ.get("FAULT_HANDLER", "generation")
    fail_rate = float(os.environ.get("FAULT_FAIL_RATE", "0"))
    generate = generation_handler(pool, config)

    async def record(job: Job, outcome: str) -> None:
        """One row per handler run, written through connection faults: retrying the insert of
        the same run (same token) adds nothing, so a run is never counted twice."""
        token = uuid.uuid4()
        await db.with_retries(
            lambda: pool.execute(
                "INSERT INTO handler_runs (token, job_id, attempt, outcome, pid) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (token) DO NOTHING",
                token,
                job.id,
                job.attempts,
                outcome,
                os.getpid(),
            ),
            deadline=30,
        )

    async def handle(job: Job) -> None:
        if kind == "quiet":
            await asyncio.sleep(float(os.environ.get("FAULT_QUIET_SECONDS", "1")))
        if kind in ("generation", "quiet"):
            await record(job, "started")
            await generate(job)
            return
        roll = random.random()
        if roll < fail_rate / 2:
            await record(job, "transient")
            raise JobFailed("dice said: try again", retryable=True)
        if roll < fail_rate:
            await record(job, "permanent")
            raise JobFailed("dice said: never")
        await record(job, "ok")
        await asyncio.sleep(0)

    return handle


if __name__ == "__main__":
    uvloop.run(serve(prepare(settings.load()), make_handler=recording_handler))
