"""The worker loop: wake on NOTIFY, claim up to the free slots, run handlers concurrently,
keep their leases, and give back what it cannot finish.

NOTIFY is only a wake-up hint: the worker looks for work once at start, after every
reconnect of its listener, whenever a notification arrives, whenever a slot frees while the
queue may still hold work, when the earliest scheduled retry falls due, and on a slow
jittered safety sweep. It never counts notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal
from uuid import UUID

import asyncpg
from prometheus_client import CollectorRegistry, start_http_server

from app import db, generation, logs, queue, retention
from app.db import CANCEL_CHANNEL, DATABASE_ERRORS, JOBS_CHANNEL, WORKER_APPLICATION, Listener
from app.metrics import WorkerMetrics
from app.models import Job
from app.providers.local import LocalProvider
from app.settings import Settings

log = logging.getLogger(__name__)

StopReason = Literal["canceled", "lost", "shutdown"]


HOST = socket.gethostname()


def new_worker_id() -> str:
    """Readable in psql: host, pid and a short random suffix (pids are reused)."""
    return f"{HOST}-{os.getpid()}-{secrets.token_hex(2)}"


class JobTimedOut(Exception):
    """The attempt ran longer than JOB_TIMEOUT (as opposed to a timeout inside the handler)."""


@dataclass
class Running:
    job: Job
    task: asyncio.Task[None]
    stop_reason: StopReason | None = None
    handler_done: bool = False
    """The handler returned; only its outcome is being written. Its slot is free again, but
    the job stays listed (its lease is renewed) until the write is done."""


@dataclass(frozen=True)
class Timing:
    poll_interval: float = 30.0
    lease_seconds: float = 30.0
    job_timeout: float = 300.0
    shutdown_grace: float = 25.0
    retry_base: float = 1.0
    retry_cap: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Timing:
        return cls(
            poll_interval=settings.worker_poll_interval,
            lease_seconds=settings.lease_seconds,
            job_timeout=settings.job_timeout,
            shutdown_grace=settings.shutdown_grace,
            retry_base=settings.retry_base_delay,
            retry_cap=settings.retry_max_delay,
        )


class Worker:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        listen_url: str,
        handler: queue.Handler,
        concurrency: int,
        timing: Timing = Timing(),
        worker_id: str | None = None,
    ) -> None:
        self.id = worker_id or new_worker_id()
        self._pool = pool
        self._listen_url = listen_url
        self._claim_pool: asyncpg.Pool | None = None
        """One connection for claims alone, committing without waiting for the WAL flush: that
        wait was half of the pickup latency. Safe because a claim that a crash of PostgreSQL
        loses leaves nothing behind it: every later write of the job (images, completion,
        failure) commits durably, and a durable commit flushes all the WAL before it, the
        claim's included. A lost claim is a job back in `pending` whose old attempt's writes
        are fenced off: the handler may run again, as after a worker crash, and is recorded
        once."""
        self._handler = handler
        self._concurrency = concurrency
        self._timing = timing
        self._running: dict[UUID, Running] = {}
        self._busy = 0
        """Jobs whose handler is running: what WORKER_CONCURRENCY bounds."""
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        self._check_leases = asyncio.Event()
        self._stopping = False
        self._draining = False
        self._queue_maybe_nonempty = True
        self._next_due: datetime | None = None
        self.metrics = WorkerMetrics()
        self._completions = queue.completions(pool, worker_id=self.id)
        self.listener = Listener(
            listen_url,
            channels={JOBS_CHANNEL: lambda _payload: self._wake.set(), CANCEL_CHANNEL: self._canceled},
            on_connect=self._listening,
            application_name=WORKER_APPLICATION,
        )

    # Control

    def stop(self) -> None:
        """Stop claiming and finish the running jobs within the grace period; a second call
        skips what is left of it. Either way, unfinished jobs are handed back."""
        if self._stopping:
            self._hurry.set()
        self._stopping = True
        self._wake.set()

    def _canceled(self, payload: str) -> None:
        try:
            running = self._running.get(UUID(payload))
        except ValueError:
            return
        if running is not None:
            self._interrupt(running, "canceled")

    def _listening(self) -> None:
        """(Re)connected: count a reconnect, check at once that the running jobs are still
        this worker's (a crash of PostgreSQL may have undone their claims), and look for work
        missed while deaf."""
        if self.listener.reconnects:
            self.metrics.listener_reconnects.inc()
            self._check_leases.set()
        self._wake.set()

    def _interrupt(self, running: Running, reason: StopReason) -> None:
        if running.stop_reason is None:
            running.stop_reason = reason
            running.task.cancel()

    # The loop

    async def run(self, *, drain: bool = False) -> None:
        """Process jobs until `stop()`; with `drain=True`, until no job is pending or running."""
        self._draining = drain
        logs.worker_id.set(self.id)
        # Opens no connection yet (min_size 0): cannot fail because PostgreSQL is down.
        self._claim_pool = await db.create_pool(
            self._listen_url, size=1, application_name=WORKER_APPLICATION, durable_commits=False
        )
        listening = None if drain else asyncio.create_task(self.listener.run())
        beating = asyncio.create_task(self._heartbeat_forever())
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
                    if self._next_due is None:
                        break
        finally:
            await self._shut_down()
            for task in (listening, beating):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            try:
                await db.with_retries(
                    lambda: queue.unregister(self._pool, worker_id=self.id), deadline=2
                )
            except DATABASE_ERRORS:
                pass
            try:
                await asyncio.wait_for(self._claim_pool.close(), timeout=2)
            except asyncio.TimeoutError:
                self._claim_pool.terminate()
            log.info("worker %s stopped", self.id, extra={"action": "worker_stopped"})

    async def _sleep_until_woken(self) -> None:
        timeout = self._timing.poll_interval * random.uniform(0.8, 1.2)
        if self._next_due is not None:
            until_due = (self._next_due - datetime.now(timezone.utc)).total_seconds()
            # At least 50 ms: a due job may be locked by another transaction for a while.
            timeout = max(0.05, min(timeout, until_due + 0.005))
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def _claim_while_room(self) -> None:
        self._next_due = None
        while not self._stopping:
            free = self._concurrency - self._busy
            if free <= 0:
                self._queue_maybe_nonempty = True
                return
            try:
                jobs = await queue.claim(
                    self._claim_pool,
                    worker_id=self.id,
                    limit=free,
                    lease_seconds=self._timing.lease_seconds,
                )
            except DATABASE_ERRORS as exc:
                log.warning("claim failed: %s", exc, extra={"action": "claim_failed"})
                self._queue_maybe_nonempty = True
                self._next_due = datetime.now(timezone.utc) + _jittered(1.0)
                return
            for job in jobs:
                self._start(job)
            if len(jobs) < free:
                self._queue_maybe_nonempty = False
                await self._schedule_next_due()
                return

    async def _schedule_next_due(self) -> None:
        """Sleep no longer than until the earliest pending job (a scheduled retry) is due."""
        try:
            self._next_due = await queue.next_run_at(self._pool)
        except DATABASE_ERRORS:
            self._next_due = datetime.now(timezone.utc) + _jittered(1.0)

    def _start(self, job: Job) -> None:
        log.info(
            "claimed job %s (attempt %d of %d)",
            job.id,
            job.attempts,
            job.max_attempts,
            extra={"action": "job_claimed", "job_id": str(job.id)},
        )
        self.metrics.job_events["claimed"].inc()
        if job.started_at is not None:
            self.metrics.pickup.observe(max(0.0, (job.started_at - job.run_at).total_seconds()))
        self.metrics.in_flight.inc()
        stale = self._running.get(job.id)
        if stale is not None and stale.job.attempts == job.attempts:
            # The claim of the run still going was lost in a crash of PostgreSQL (see
            # _claim_pool) and this worker claimed the job again, under the same attempt
            # number: stop the old run; its writes would pass the same fence. (A retry or a
            # reclaim comes back with the next attempt number: its old run is only writing
            # an outcome the fence already settles.)
            self._interrupt(stale, "lost")
        task = asyncio.create_task(self._execute(job))
        running = self._running[job.id] = Running(job, task)
        self._busy += 1
        task.add_done_callback(lambda _task: self._finished(running))

    def _slot_freed(self, running: Running) -> None:
        """The handler is done: let the next job start while its outcome is written, so that
        claiming overlaps with writing completions."""
        if not running.handler_done:
            running.handler_done = True
            self._busy -= 1
            self.metrics.in_flight.dec()
            if self._queue_maybe_nonempty:
                self._wake.set()

    def _finished(self, running: Running) -> None:
        self._slot_freed(running)
        if self._running.get(running.job.id) is running:
            del self._running[running.job.id]
        if self._queue_maybe_nonempty or (self._draining and not self._running):
            self._wake.set()

    # One job

    async def _execute(self, job: Job) -> None:
        extra = {"job_id": str(job.id)}
        running = self._running[job.id]
        try:
            await self._run_handler(running)
        except asyncio.CancelledError:
            reason = running.stop_reason
            if reason is None:
                raise
            log.info("stopped job %s: %s", job.id, reason, extra={"action": f"job_{reason}", **extra})
            if reason != "shutdown":
                self.metrics.job_events[reason].inc()
            return
        except JobTimedOut:
            await self._failed(job, f"timed out after {self._timing.job_timeout:g}s", retryable=True)
        except queue.OwnershipLost:
            log.warning("lost job %s", job.id, extra={"action": "job_lost", **extra})
            self.metrics.job_events["lost"].inc()
        except queue.JobFailed as exc:
            await self._failed(job, str(exc) or type(exc).__name__, retryable=exc.retryable)
        except Exception as exc:
            log.exception("handler crashed on job %s", job.id, extra={"action": "job_crashed", **extra})
            await self._failed(job, f"internal error: {type(exc).__name__}: {exc}", retryable=True)
        else:
            if await self._record(lambda: self._completions.submit(job), job):
                log.info("completed job %s", job.id, extra={"action": "job_completed", **extra})
                self.metrics.job_events["completed"].inc()

    async def _run_handler(self, running: Running) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timing.job_timeout) as limit:
                await self._handler(running.job)
        except TimeoutError:
            if limit.expired():
                raise JobTimedOut from None
            raise  # a timeout inside the handler (a slow provider call, say): its own failure
        finally:
            self.metrics.run_time.observe(time.perf_counter() - started)
            self._slot_freed(running)

    async def _failed(self, job: Job, error: str, *, retryable: bool) -> None:
        extra = {"job_id": str(job.id)}
        owner = {"job_id": job.id, "worker_id": self.id, "attempt": job.attempts}
        if retryable and job.attempts < job.max_attempts:
            delay = db.backoff(job.attempts, base=self._timing.retry_base, cap=self._timing.retry_cap)
            if await self._record(
                lambda: queue.retry(self._pool, error=error, delay=delay, **owner), job
            ):
                log.info(
                    "job %s attempt %d failed, retrying in %.1fs: %s",
                    job.id,
                    job.attempts,
                    delay,
                    error,
                    extra={"action": "job_retried", **extra},
                )
                self.metrics.job_events["retried"].inc()
            return
        if await self._record(lambda: queue.fail(self._pool, error=error, **owner), job):
            log.info("failed job %s: %s", job.id, error, extra={"action": "job_failed", **extra})
            self.metrics.job_events["failed"].inc()

    async def _record(self, write: Callable[[], Awaitable[bool]], job: Job) -> bool:
        """Write a job's outcome, riding out a database outage for up to one lease (after
        that the lease lapses and the job is reclaimed anyway). False if the worker no
        longer owned the job."""
        extra = {"job_id": str(job.id)}
        try:
            owned = await db.with_retries(write, deadline=self._timing.lease_seconds)
        except DATABASE_ERRORS as exc:
            log.warning(
                "could not record the outcome of job %s: %s",
                job.id,
                exc,
                extra={"action": "job_outcome_unrecorded", **extra},
            )
            return False
        if not owned:
            log.warning("lost job %s before recording it", job.id, extra={"action": "job_lost", **extra})
        return owned

    # Leases, heartbeat, reclaiming

    async def _heartbeat_forever(self) -> None:
        interval = self._timing.lease_seconds / 3
        while True:
            try:
                await self._heartbeat()
            except DATABASE_ERRORS as exc:
                log.warning("heartbeat failed: %s", exc, extra={"action": "heartbeat_failed"})
            except Exception:
                # Never let the heartbeat die: without it leases lapse under running jobs.
                log.exception("heartbeat crashed", extra={"action": "heartbeat_failed"})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._check_leases.wait(), interval * random.uniform(0.9, 1.0))
            self._check_leases.clear()

    async def _heartbeat(self) -> None:
        """Renew this worker's leases in one statement, say it is alive, reclaim the jobs of
        workers that stopped renewing, and forget workers long dead."""
        timing = self._timing
        if self._running:
            mine = list(self._running)
            owned = await queue.renew_leases(
                self._pool, worker_id=self.id, job_ids=mine, lease_seconds=timing.lease_seconds
            )
            for job_id in set(mine) - owned:
                running = self._running.get(job_id)
                if running is not None and not running.handler_done:
                    self._interrupt(running, "lost")
        await queue.heartbeat(
            self._pool,
            worker_id=self.id,
            host=HOST,
            pid=os.getpid(),
            concurrency=self._concurrency,
            running=len(self._running),
        )
        for row in await queue.reclaim_expired(self._pool):
            self.metrics.job_events["reclaimed"].inc()
            log.warning(
                "reclaimed job %s from %s: now %s",
                row["id"],
                row["worker_id"],
                row["status"],
                extra={"action": "job_reclaimed", "job_id": str(row["id"])},
            )
        await queue.delete_dead_workers(self._pool, unseen_for=timing.lease_seconds * 3)

    # Shutdown

    async def _shut_down(self) -> None:
        """Let running jobs finish within the grace period (cut short by a second stop), then
        stop the rest and hand them straight back to the queue."""
        if not self._running:
            return
        tasks = [running.task for running in self._running.values()]
        log.info(
            "waiting up to %gs for %d running jobs",
            self._timing.shutdown_grace,
            len(tasks),
            extra={"action": "worker_draining"},
        )
        all_done = asyncio.ensure_future(asyncio.wait(tasks))
        hurry = asyncio.ensure_future(self._hurry.wait())
        await asyncio.wait(
            [all_done, hurry], timeout=self._timing.shutdown_grace, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in (all_done, hurry):
            waiter.cancel()
        unfinished = [running for running in self._running.values() if not running.task.done()]
        if not unfinished:
            return
        for running in unfinished:
            self._interrupt(running, "shutdown")
        await asyncio.wait([running.task for running in unfinished])
        jobs = [running.job for running in unfinished]
        try:
            handed = await db.with_retries(
                lambda: queue.hand_back(self._pool, worker_id=self.id, jobs=jobs), deadline=5
            )
        except DATABASE_ERRORS as exc:
            log.warning(
                "could not hand back %d jobs (their leases will lapse): %s",
                len(jobs),
                exc,
                extra={"action": "hand_back_failed"},
            )
            return
        self.metrics.job_events["handed_back"].inc(len(handed))
        for job_id in handed:
            log.info("handed back job %s", job_id, extra={"action": "job_handed_back", "job_id": str(job_id)})


def _jittered(seconds: float) -> timedelta:
    return timedelta(seconds=seconds * random.uniform(0.5, 1.5))


def serve_metrics(registry: CollectorRegistry, port: int) -> None:
    """Serve /metrics on `port` from a background thread; a port in use stops the process."""
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        raise SystemExit(f"menagerie: cannot serve worker metrics on port {port}: {exc}") from None
    log.info("worker metrics on port %d", port, extra={"action": "metrics_listening"})


HandlerFactory = Callable[[asyncpg.Pool, Settings], queue.Handler]


def generation_handler(pool: asyncpg.Pool, settings: Settings) -> queue.Handler:
    provider = LocalProvider(delay=settings.image_provider_delay, size=settings.image_size)
    return generation.handler(pool, provider, db_patience=settings.lease_seconds)


async def serve(settings: Settings, *, make_handler: HandlerFactory = generation_handler) -> None:
    """Run one worker process until SIGTERM or SIGINT (a second one skips the grace period)."""
    assert settings.database_url is not None
    pool = await db.create_pool(
        settings.database_url, size=settings.worker_concurrency + 3, application_name=WORKER_APPLICATION
    )
    worker = Worker(
        pool=pool,
        listen_url=settings.database_url,
        handler=make_handler(pool, settings),
        concurrency=settings.worker_concurrency,
        timing=Timing.from_settings(settings),
    )
    if settings.worker_metrics_port is not None:
        serve_metrics(worker.metrics.registry, settings.worker_metrics_port)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    sweeping = asyncio.create_task(
        retention.run_forever(
            pool,
            older_than_days=settings.retention_days,
            batch_size=settings.retention_batch_size,
        )
    )
    try:
        await worker.run()
    finally:
        sweeping.cancel()
        await asyncio.gather(sweeping, return_exceptions=True)
        await pool.close()
