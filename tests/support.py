"""Helpers for tests that drive real processes over HTTP and wait on the database."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from uuid import UUID

import asyncpg
import httpx
from asgi_lifespan import LifespanManager

from app import queue
from app.api import create_app
from app.images import generations
from app.queue.kinds import Exponential, Kind
from app.queue.worker import Timing
from app.settings import Settings

READY_TIMEOUT = 30
TEST_TIMING = Timing(poll_interval=3600, lease_seconds=30, shutdown_grace=0)
"""In-process test workers: the safety sweep an hour away (only NOTIFY and timers wake
them)."""
TEST_KIND = "test"
TEST_BACKOFF = Exponential(base=0.2, cap=0.4)
"""Quick retries."""


def make_kind(
    handler, *, name: str = TEST_KIND, slots: int = 4, timeout: float = 300, backoff=TEST_BACKOFF
) -> Kind:
    """A kind named `name` (`test`) running `handler`, with quick retries."""
    return Kind(name, handler, slots=slots, timeout=timeout, backoff=backoff)


TERMINAL = {"completed", "failed", "canceled"}


@contextlib.asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API built with `settings`, in process, lifespan entered, driven over ASGI."""
    async with LifespanManager(create_app(settings)) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://menagerie.test") as http:
            yield http


async def insert_jobs(
    pool: asyncpg.Pool | asyncpg.Connection,
    count: int,
    *,
    kind: str = TEST_KIND,
    args: object = None,
    max_attempts: int = 3,
    watched: bool = False,
) -> list[UUID]:
    """Enqueue `count` jobs of `kind` in one statement (one NOTIFY); their ids."""
    return list(
        await queue.enqueue(
            pool,
            [queue.NewJob(kind, args=args, max_attempts=max_attempts, watched=watched) for _ in range(count)],
        )
    )


async def insert_generations(
    pool: asyncpg.Pool, count: int, *, num_images: int = 1, animal: str = "cat", max_attempts: int = 3
) -> list[UUID]:
    """Create `count` pending generation jobs in one statement (one NOTIFY); their ids."""
    created = await generations.create_many(
        pool, [generations.Request(num_images, animal, max_attempts)] * count
    )
    return [job.id for job in created]


async def set_status(
    pool: asyncpg.Pool, job_ids: list[UUID], status: str, *, error: str | None = None
) -> None:
    """Move waiting jobs straight to `status` in the database, as if a worker had got that far:
    `processing` (claimed by worker `w-test`), or a finished status (completed, failed,
    canceled) with its record in finished_jobs."""
    if status == "processing":
        await pool.execute(
            "UPDATE job_queue SET worker_id = 'w-test', attempts = attempts + 1, started_at = now(), "
            "lease_expires_at = now() + interval '1 hour' WHERE id = ANY($1::uuid[])",
            job_ids,
        )
        return
    await pool.execute(
        "WITH gone AS (DELETE FROM job_queue WHERE id = ANY($1::uuid[]) RETURNING *) "
        "INSERT INTO finished_jobs (id, kind, status, priority, args, attempts, max_attempts, worker_id, "
        "                           error, created_at, started_at, finished_at, version) "
        "SELECT id, kind, $2, priority, args, greatest(attempts, 1), max_attempts, worker_id, $3, "
        "       created_at, coalesce(started_at, now()), now(), version + 1 FROM gone",
        job_ids,
        status,
        error,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_ready(base: str, process: subprocess.Popen[bytes]) -> None:
    """Wait until the server at `base` answers /readyz with 200."""
    async with httpx.AsyncClient(base_url=base, timeout=2) as http:
        for _ in range(READY_TIMEOUT * 10):
            assert process.poll() is None, f"exited with {process.returncode} before it was ready"
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{base} was not ready within {READY_TIMEOUT}s")


async def wait_until_terminal(http: httpx.AsyncClient, location: str, timeout: float = 30) -> dict:
    """Poll a job until it is completed, failed or canceled; return it."""
    job: dict = {}
    for _ in range(int(timeout * 20)):
        job = (await http.get(location)).json()
        if job["status"] in TERMINAL:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {location} still {job.get('status')} after {timeout}s")


SENTINEL = "sentinel"


async def wait_for_earlier_notifications(pool: asyncpg.Pool, channel: str, received: list[str]) -> None:
    """NOTIFY a marker on `channel` and wait until the listener appending payloads to
    `received` has it: it then has every notification committed before (PostgreSQL delivers
    them in commit order). The marker is removed from `received`."""
    await pool.execute("SELECT pg_notify($1, $2)", channel, SENTINEL)

    async def arrived() -> bool:
        return SENTINEL in received

    await wait_for(arrived)
    received.remove(SENTINEL)


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], *, timeout: float = 10, interval: float = 0.02
) -> None:
    """Wait until `predicate()` is true, failing after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
