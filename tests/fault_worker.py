"""A real worker process for the fault tests: the project's own worker process (worker loop,
maintenance, signals, leases, retries, hand-back) running two kinds, `generate` and the tests'
`chore`, with handlers that first record each run in the test database's `handler_runs` table,
so a test can count per job how often the handler ran.

FAULT_HANDLER=generation (default) then runs the real generation, and a chore sleeps
FAULT_CHORE_SECONDS; FAULT_HANDLER=dice instead succeeds, fails transiently or fails for good
at random (FAULT_FAIL_RATE), for both kinds; FAULT_HANDLER=quiet first waits
FAULT_QUIET_SECONDS without writing anything, then records its run and generates.
"""

import asyncio
import os
import random
import uuid
from dataclasses import replace

import asyncpg
import uvloop

from app import db, registry, settings
from app.process import prepare
from app.queue.kinds import Fail, Job, Kind, Retry, configured
from app.queue.process import serve
from app.settings import Settings


def recording_kinds(pool: asyncpg.Pool, config: Settings) -> list[Kind]:
    mode = os.environ.get("FAULT_HANDLER", "generation")
    fail_rate = float(os.environ.get("FAULT_FAIL_RATE", "0"))
    chore_seconds = float(os.environ.get("FAULT_CHORE_SECONDS", "0.2"))
    [generate] = registry.kinds(config, pool)

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

    async def dice(job: Job) -> None:
        roll = random.random()
        if roll < fail_rate / 2:
            await record(job, "transient")
            raise Retry("dice said: try again")
        if roll < fail_rate:
            await record(job, "permanent")
            raise Fail("dice said: never")
        await record(job, "ok")
        await asyncio.sleep(0)

    async def generation(job: Job) -> None:
        if mode == "quiet":
            await asyncio.sleep(float(os.environ.get("FAULT_QUIET_SECONDS", "1")))
        await record(job, "started")
        await generate.handler(job)  # type: ignore[misc]

    async def chore(job: Job) -> None:
        await record(job, "started")
        await asyncio.sleep(chore_seconds)

    chores = Kind("chore", dice if mode == "dice" else chore, slots=4, max_attempts=3)
    return [
        replace(generate, handler=dice if mode == "dice" else generation),
        configured(chores, config.kind("chore")),
    ]


async def main(config: Settings) -> None:
    pool = await db.create_pool(
        config.database, size=registry.pool_size(config) + 4, application_name=db.WORKER_APPLICATION
    )
    try:
        await serve(
            config, pool=pool, registry=recording_kinds(pool, config), rounds=registry.rounds(config, pool)
        )
    finally:
        await pool.close()


if __name__ == "__main__":
    uvloop.run(main(prepare(settings.load())))
