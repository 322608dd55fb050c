"""The worker loop: wake on NOTIFY, claim up to the free slots, run handlers concurrently.

NOTIFY is only a wake-up hint: the worker looks for work once at start, after every
reconnect of its listener, whenever a notification arrives, whenever a slot frees while the
queue may still hold work, and on a slow jittered safety sweep. It never counts
notifications.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import signal
import socket

import asyncpg

from app import db, generation, queue
from app.db import JOBS_CHANNEL, UNAVAILABLE_ERRORS, Listener
from app.models import Job
from app.providers.local import LocalProvider
from app.settings import Settings

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    """Readable in psql: host, pid and a short random suffix (pids are reused)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class Worker:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        listen_url: str,
        handler: queue.Handler,
        concurrency: int,
        poll_interval: float,
        lease_seconds: float,
        worker_id: str | None = None,
    ) -> None:
        self.id = worker_id or new_worker_id()
        self._pool = pool
        self._handler = handler
        self._concurrency = concurrency
        self._poll_interval = poll_interval
        self._lease_seconds = lease_seconds
        self._running: dict[asyncio.Task[None], Job] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._queue_maybe_nonempty = True
        self.listener = Listener(
            listen_url, channel=JOBS_CHANNEL, on_notify=self._wake.set, on_connect=self._wake.set
        )

    def stop(self) -> None:
        """Stop claiming; `run` returns once the running jobs have finished."""
        self._stopping = True
        self._wake.set()

    async def run(self, *, drain: bool = False) -> None:
        """Process jobs until `stop()`; with `drain=True`, until the queue is empty instead."""
        listening = None if drain else asyncio.create_task(self.listener.run())
        log.info("worker %s started", self.id, extra={"action": "worker_started"})
        self._wake.set()
        try:
            while not self._stopping:
                await self._sleep_until_woken()
                self._wake.clear()
                if self._stopping:
                    break
                await self._claim_while_room()
                if drain and not self._running and not self._queue_maybe_nonempty:
                    break
        finally:
            if self._running:
                await asyncio.wait(list(self._running))
            if listening is not None:
                listening.cancel()
                await asyncio.gather(listening, return_exceptions=True)
            log.info("worker %s stopped", self.id, extra={"action": "worker_stopped"})

    async def _sleep_until_woken(self) -> None:
        sweep = self._poll_interval * random.uniform(0.8, 1.2)
        try:
            await asyncio.wait_for(self._wake.wait(), sweep)
        except asyncio.TimeoutError:
            pass

    async def _claim_while_room(self) -> None:
        while not self._stopping:
            free = self._concurrency - len(self._running)
            if free <= 0:
                self._queue_maybe_nonempty = True
                return
            try:
                jobs = await queue.claim(
                    self._pool, worker_id=self.id, limit=free, lease_seconds=self._lease_seconds
                )
            except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
                log.warning("claim failed: %s", exc, extra={"action": "claim_failed"})
                self._queue_maybe_nonempty = True
                return
            for job in jobs:
                log.info(
                    "claimed job %s (attempt %d)",
                    job.id,
                    job.attempts,
                    extra={"action": "job_claimed", "job_id": str(job.id)},
                )
                task = asyncio.create_task(self._execute(job))
                self._running[task] = job
                task.add_done_callback(self._finished)
            if len(jobs) < free:
                self._queue_maybe_nonempty = False
                return

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        if self._queue_maybe_nonempty:
            self._wake.set()

    async def _execute(self, job: Job) -> None:
        extra = {"job_id": str(job.id)}
        owner = {"job_id": job.id, "worker_id": self.id, "attempt": job.attempts}
        try:
            try:
                await self._handler(job)
            except queue.OwnershipLost:
                log.warning("lost job %s", job.id, extra={"action": "job_lost", **extra})
                return
            except queue.JobFailed as exc:
                error = str(exc) or type(exc).__name__
            except Exception as exc:
                log.exception("handler crashed on job %s", job.id, extra={"action": "job_crashed", **extra})
                error = f"internal error: {type(exc).__name__}: {exc}"
            else:
                if await queue.complete(self._pool, **owner):
                    log.info("completed job %s", job.id, extra={"action": "job_completed", **extra})
                else:
                    log.warning("lost job %s", job.id, extra={"action": "job_lost", **extra})
                return
            if await queue.fail(self._pool, error=error, **owner):
                log.info("failed job %s: %s", job.id, error, extra={"action": "job_failed", **extra})
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
            log.warning(
                "could not record the outcome of job %s: %s",
                job.id,
                exc,
                extra={"action": "job_outcome_unrecorded", **extra},
            )


async def serve(settings: Settings) -> None:
    """Run one worker process until SIGTERM or SIGINT."""
    assert settings.database_url is not None
    pool = await db.create_pool(settings.database_url, size=settings.worker_concurrency + 2)
    provider = LocalProvider(delay=settings.image_provider_delay, size=settings.image_size)
    worker = Worker(
        pool=pool,
        listen_url=settings.database_url,
        handler=generation.handler(pool, provider),
        concurrency=settings.worker_concurrency,
        poll_interval=settings.worker_poll_interval,
        lease_seconds=settings.lease_seconds,
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    try:
        await worker.run()
    finally:
        await pool.close()
