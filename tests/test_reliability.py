"""Retries, timeouts, leases, the workers table and cancellation, with in-process workers on
real PostgreSQL (the fault tests in test_faults.py do the same with real processes)."""

from __future__ import annotations

import asyncio
import os
import socket
from uuid import UUID

import asyncpg
import pytest

from app.queue import jobs
from app.queue.kinds import Exponential, Fail, Job, Retry
from app.queue.worker import Timing, Worker
from tests.support import TEST_BACKOFF, insert_generations, insert_jobs, make_kind, set_status, wait_for

SHORT_LEASE = Timing(poll_interval=3600, lease_seconds=1.5, shutdown_grace=0)
"""Leases a test can watch lapse and be reclaimed within about a second, yet long enough that
a live worker keeps its own through the scheduling stalls of a loaded 2-core machine (it
renews them every third of a lease, 0.5 s: a stall would have to last a whole second)."""


async def new_job(pool: asyncpg.Pool, *, max_attempts: int = 3) -> UUID:
    [job_id] = await insert_jobs(pool, 1, max_attempts=max_attempts)
    return job_id


async def new_generation(pool: asyncpg.Pool) -> UUID:
    """A job the API knows (the cancel endpoint is about generations)."""
    [job_id] = await insert_generations(pool, 1)
    return job_id


async def job_row(pool: asyncpg.Pool, job_id: UUID) -> asyncpg.Record:
    return await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)


async def reaches(pool: asyncpg.Pool, job_id: UUID, status: str, timeout: float = 10) -> asyncpg.Record:
    async def arrived() -> bool:
        return (await job_row(pool, job_id))["status"] == status

    await wait_for(arrived, timeout=timeout)
    return await job_row(pool, job_id)


class Script:
    """A handler that plays one scripted outcome per attempt and records when each ran."""

    def __init__(self, *outcomes: str, pause: float = 0.0) -> None:
        self.outcomes = list(outcomes)
        self.runs: list[tuple[int, float]] = []
        self.pause = pause

    async def __call__(self, job: Job) -> None:
        self.runs.append((job.attempts, asyncio.get_running_loop().time()))
        outcome = self.outcomes[min(len(self.runs), len(self.outcomes)) - 1]
        await asyncio.sleep(self.pause)
        if outcome == "transient":
            raise Retry(f"flaky on attempt {job.attempts}")
        if outcome == "permanent":
            raise Fail("this will never work")
        if outcome == "hang":
            await asyncio.sleep(3600)


@pytest.mark.smoke
async def test_a_transient_failure_is_retried_after_backoff_woken_by_a_timer(pool, start_worker):
    """A transient failure puts the job back with a backoff; with the safety sweep an hour away
    the worker still wakes when it is due and completes it on attempt 2."""
    script = Script("transient", "ok")
    await start_worker(script)
    job_id = await new_job(pool)
    row = await reaches(pool, job_id, "completed")
    assert row["attempts"] == 2 and row["error"] is None
    (_, first), (_, second) = script.runs
    # The backoff after a first failure is the base delay times a random half to whole; the
    # timer wakes the worker 5 ms after the job falls due, and claiming takes a round trip.
    # 0.5 s on top is room for a loaded machine, and still catches a worker that oversleeps
    # (a whole-second timer, or a job left to the hour-long sweep).
    assert TEST_BACKOFF.base * 0.5 <= second - first < TEST_BACKOFF.base + 0.5


async def test_transient_failures_stop_after_the_last_attempt(pool, start_worker):
    """A job failing transiently every time ends `failed` after JOB_MAX_ATTEMPTS attempts, with
    the last attempt's error."""
    await start_worker(Script("transient"))
    job_id = await new_job(pool, max_attempts=3)
    row = await reaches(pool, job_id, "failed")
    assert row["attempts"] == 3
    assert row["error"] == "flaky on attempt 3"


async def test_a_permanent_failure_fails_at_once(pool, start_worker):
    """A permanent error fails the job on its first attempt, without retrying."""
    script = Script("permanent")
    await start_worker(script)
    job_id = await new_job(pool)
    row = await reaches(pool, job_id, "failed")
    assert row["attempts"] == 1 and len(script.runs) == 1
    assert row["error"] == "this will never work"


async def test_an_attempt_that_runs_too_long_times_out_as_a_transient_failure(pool, start_worker):
    """JOB_TIMEOUT ends a hanging attempt; it is retried like a transient failure, and the job
    fails with a timeout error once out of attempts."""
    script = Script("hang")
    await start_worker(make_kind(script, timeout=0.2, backoff=Exponential(base=0.05, cap=0.1)))
    job_id = await new_job(pool, max_attempts=2)
    row = await reaches(pool, job_id, "failed")
    assert row["attempts"] == 2 and len(script.runs) == 2
    assert row["error"] == "timed out after 0.2s"


async def test_a_timeout_inside_the_handler_is_its_own_failure_not_the_job_timeout(pool, start_worker):
    """A TimeoutError raised by the handler itself (a slow call it gave up on) fails the
    attempt with that error; only JOB_TIMEOUT running out reads "timed out after"."""

    async def gives_up(job: Job) -> None:
        raise TimeoutError("the provider did not answer")

    await start_worker(make_kind(gives_up, timeout=30, backoff=Exponential(base=0.01, cap=0.02)))
    job_id = await new_job(pool, max_attempts=1)
    row = await reaches(pool, job_id, "failed")
    assert "the provider did not answer" in row["error"]
    assert "timed out after" not in row["error"]


async def test_an_expired_lease_is_reclaimed_and_the_old_owner_can_write_nothing(pool, start_worker):
    """A job whose worker stopped renewing its lease is reclaimed by a live worker (counting
    the attempt) and completed there; the stale owner's late completion changes nothing."""
    job_id = await new_job(pool)
    [stale] = await jobs.claim(pool, worker_id="gone-1-dead", wanted={"test": 1}, lease_seconds=0.3)
    script = Script("ok")
    await start_worker(script, timing=SHORT_LEASE)
    row = await reaches(pool, job_id, "completed")
    assert row["attempts"] == 2 and script.runs[0][0] == 2
    assert not await jobs.complete_many(pool, worker_id="gone-1-dead", jobs=[(job_id, stale.attempts)])


async def test_an_expired_lease_on_the_last_attempt_fails_the_job_naming_the_worker(pool, start_worker):
    """A job whose worker stopped renewing its lease on its last allowed attempt is not run
    again: a live worker's maintenance marks it failed, with an error naming the dead worker."""
    job_id = await new_job(pool, max_attempts=1)
    await jobs.claim(pool, worker_id="gone-2-dead", wanted={"test": 1}, lease_seconds=0.3)
    script = Script("ok")
    await start_worker(script, timing=SHORT_LEASE)
    row = await reaches(pool, job_id, "failed")
    assert row["attempts"] == 1 and row["finished_at"] is not None
    assert "gone-2-dead" in row["error"] and "lease" in row["error"]
    assert script.runs == []


async def test_a_claim_undone_by_a_crash_and_claimed_again_stops_the_stale_run(pool, start_worker):
    """Claims commit without waiting for the WAL flush, so a crash of PostgreSQL can undo one:
    the job is pending again under the same attempt number. When the same worker claims it
    again while its first run is still going, it stops that run (counted as lost) and the job
    completes once, on attempt 1, by the second run."""
    runs: list[int] = []

    async def handler(job: Job) -> None:
        runs.append(job.attempts)
        if len(runs) == 1:
            await asyncio.sleep(3600)  # the run whose claim the crash undoes

    worker = await start_worker(handler, concurrency=2)
    job_id = await new_job(pool)
    await reaches(pool, job_id, "processing")

    async def first_run_started() -> bool:
        return runs == [1]

    await wait_for(first_run_started)
    # What a crash right after the claim leaves behind; the NOTIFY stands for the worker's
    # look for work once its listener has reconnected.
    await pool.execute(
        "UPDATE job_queue SET attempts = 0, worker_id = NULL, lease_expires_at = NULL, started_at = NULL "
        "WHERE id = $1",
        job_id,
    )
    await pool.execute("SELECT pg_notify('menagerie_jobs', 'test')")
    done = await reaches(pool, job_id, "completed")
    assert done["attempts"] == 1 and runs == [1, 1]
    assert _counted(worker, "lost") == 1
    assert not worker._running


async def test_a_long_job_keeps_its_lease_by_heartbeat(pool, start_worker):
    """A job running for two leases is renewed by its worker's heartbeat, so another worker
    never reclaims it: it runs once and completes on attempt 1."""
    # Unrenewed, the lease would lapse 1.5 s in and the second worker's heartbeat (every
    # 0.5 s) would reclaim the job well before its 3 s are up.
    script = Script("ok", pause=2 * SHORT_LEASE.lease_seconds)
    await start_worker(script, timing=SHORT_LEASE)
    job_id = await new_job(pool)
    await wait_for(lambda: _status_is(pool, job_id, "processing"))
    await start_worker(Script("ok"), timing=SHORT_LEASE)
    row = await reaches(pool, job_id, "completed")
    assert row["attempts"] == 1 and len(script.runs) == 1


async def _status_is(pool: asyncpg.Pool, job_id: UUID, status: str) -> bool:
    return (await job_row(pool, job_id))["status"] == status


async def test_workers_are_listed_while_alive_and_removed_when_stopped_or_dead(pool, start_worker):
    """A running worker has a row (host, pid, heartbeat); a worker unseen for three leases is
    deleted by the others' maintenance; a worker that stops deletes its own row."""
    await pool.execute(
        "INSERT INTO workers (id, host, pid, concurrency, last_seen_at) "
        "VALUES ('ghost-1-beef', 'elsewhere', 1, 4, now() - interval '1 hour')"
    )
    worker = await start_worker(Script("ok"), timing=SHORT_LEASE)
    await wait_for(lambda: _worker_ids(pool, {worker.id}))
    row = await pool.fetchrow("SELECT host, pid, concurrency FROM workers WHERE id = $1", worker.id)
    assert (row["host"], row["pid"], row["concurrency"]) == (socket.gethostname(), os.getpid(), 4)
    worker.stop()
    await wait_for(lambda: _worker_ids(pool, set()))


async def _worker_ids(pool: asyncpg.Pool, expected: set[str]) -> bool:
    return {row["id"] for row in await pool.fetch("SELECT id FROM workers")} == expected


async def test_a_job_canceled_while_pending_is_never_run(client, pool, start_worker):
    """Canceling a pending job answers 200 `canceled` at once, and no worker ever runs it."""
    job_id = await new_generation(pool)
    response = await client.post(f"/generations/{job_id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "canceled" and response.json()["finishedAt"]
    script = Script("ok")
    await start_worker(make_kind(script, name="generate"))
    # A job queued after it, completed: the worker has looked at the queue since (at start
    # and on this job's NOTIFY) and passed the canceled job over.
    later = await new_generation(pool)
    await reaches(pool, later, "completed")
    assert [attempt for attempt, _ in script.runs] == [1]
    assert (await job_row(pool, job_id))["status"] == "canceled"


async def test_a_processing_job_canceled_stops_on_its_worker(client, pool, start_worker):
    """Canceling a processing job stops its handler through the cancel NOTIFY (counted as
    canceled, not lost), and the job stays canceled."""
    script = Script("hang")
    worker = await start_worker(make_kind(script, name="generate", slots=1))
    job_id = await new_generation(pool)
    await wait_for(lambda: _status_is(pool, job_id, "processing"))
    response = await client.post(f"/generations/{job_id}/cancel")
    assert response.json()["status"] == "canceled"
    # The NOTIFY stops it in milliseconds. Without it only the heartbeat would, finding the
    # job no longer owned (every third of a 30 s lease: 10 s); the counters below tell which.
    await wait_for(lambda: _idle(worker), timeout=5)
    assert (_counted(worker, "canceled"), _counted(worker, "lost")) == (1, 0)
    assert (await job_row(pool, job_id))["status"] == "canceled"


async def _idle(worker: Worker) -> bool:
    return not worker._running


def _counted(worker: Worker, event: str) -> float | None:
    """The worker's menagerie_worker_jobs_total for `event`."""
    kind = worker.kinds[0]
    return worker.metrics.registry.get_sample_value(
        "menagerie_worker_jobs_total", {"event": event, "kind": kind}
    )


@pytest.mark.parametrize("status", ["completed", "failed"])
async def test_canceling_a_finished_job_is_a_conflict(client, pool, status):
    """Canceling a completed or failed job answers 409 problem+json and changes nothing."""
    job_id = await new_generation(pool)
    await set_status(pool, [job_id], status)
    response = await client.post(f"/generations/{job_id}/cancel")
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 409 and status in response.json()["detail"]
    assert (await job_row(pool, job_id))["status"] == status


async def test_canceling_twice_is_harmless_and_unknown_jobs_are_404(client, pool):
    """A repeated cancel answers 200 with the same canceled job; an unknown or malformed id
    answers 404; so does a job that is not a generation (the API cancels generations only),
    which keeps running."""
    job_id = await new_generation(pool)
    first = await client.post(f"/generations/{job_id}/cancel")
    second = await client.post(f"/generations/{job_id}/cancel")
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    other = await new_job(pool)
    for unknown in ("00000000-0000-0000-0000-000000000000", "nope", str(other)):
        response = await client.post(f"/generations/{unknown}/cancel")
        assert response.status_code == 404
    assert (await job_row(pool, other))["status"] == "pending"
