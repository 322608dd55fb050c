"""The worker loop: wake on NOTIFY, claim up to each kind's free slots, run the handlers, keep
their leases, write their outcomes in batches, and give back what it cannot finish.

NOTIFY is only a wake-up hint (its payload names the kind): the worker looks for work once at
start, after every reconnect of its listener, whenever a notification for one of its kinds
arrives, whenever a slot frees while the queue may still hold work, when the earliest
scheduled retry falls due, and on a slow jittered safety sweep. It never counts notifications.

Each kind has its own slots: a slow kind with a backlog never takes the slots of another. A
plain-function handler is called inline, between claims, and its outcome joins the next batch
of writes; an async handler runs in a task of its own under the kind's timeout. A job's slot
frees when its handler ends, while its outcome is still being written: claims overlap writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import asyncpg

from app import db, logs
from app.db import CANCEL_CHANNEL, DATABASE_ERRORS, JOBS_CHANNEL, WORKER_APPLICATION, Listener
from app.queue import jobs as queue
from app.queue.kinds import Fail, Job, Kind, OwnershipLost, Retry
from app.queue.metrics import WorkerMetrics
from app.sql import queries

log = logging.getLogger(__name__)

StopReason = Literal["canceled", "lost", "shutdown"]

HOST = socket.gethostname()


def new_worker_id() -> str:
    """Readable in psql: host, pid and a short random suffix (pids are reused)."""
    return f"{HOST}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class Timing:
    poll_interval: float
    """Seconds between safety sweeps (new jobs arrive by NOTIFY)."""
    lease_seconds: float
    """How long a claim lasts unless renewed (renewed every third of it)."""
    shutdown_grace: float
    """Seconds a stopping worker lets running jobs finish before handing them back."""


@dataclass(slots=True)
class Lane:
    """One kind's share of a worker."""

    kind: Kind
    busy: int = 0
    """Handlers of this kind running now: what its slots bound."""
    writing: int = 0
    """Jobs of this kind whose outcome waits to be written."""
    maybe_waiting: bool = True
    """The queue may hold due jobs of this kind."""
    next_due: datetime | None = None
    """When its earliest waiting job falls due, if none was due at the last claim."""

    @property
    def free(self) -> int:
        """Slots to claim into: never more than the kind's slots run at once, and claiming
        pauses while more than a batch of its outcomes is still being written."""
        slots = self.kind.slots
        return max(0, min(slots - self.busy, 2 * slots - self.busy - self.writing))


@dataclass(slots=True)
class Running:
    """An async handler's run."""

    job: Job
    lane: Lane
    task: asyncio.Task[None] | None = None
    stop_reason: StopReason | None = None


@dataclass(slots=True)
class Outcomes:
    """Outcomes waiting to be written, by statement."""

    completed: list[Job] = field(default_factory=list)
    failed: list[tuple[Job, str]] = field(default_factory=list)
    retried: list[tuple[Job, str, float]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.completed) + len(self.failed) + len(self.retried)

    def jobs(self) -> Iterable[Job]:
        yield from self.completed
        for job, *_ in self.failed:
            yield job
        for job, *_ in self.retried:
            yield job


class Worker:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        listen_url: str,
        kinds: Iterable[Kind],
        timing: Timing,
        worker_id: str | None = None,
    ) -> None:
        self.id = worker_id or new_worker_id()
        self._pool = pool
        self._listen_url = listen_url
        self._claim_pool: asyncpg.Pool | None = None
        """One connection for claims alone, committing without waiting for the WAL flush: that
        wait was half of the pickup latency. Safe because a claim that a crash of PostgreSQL
        loses leaves nothing behind it: every later write of the job (progress, completion,
        failure) commits durably, and a durable commit flushes all the WAL before it, the
        claim's included. A lost claim is a job waiting again whose old attempt's writes are
        fenced off: the handler may run again, as after a worker crash, and is recorded once."""
        self._lanes = {kind.name: Lane(kind) for kind in kinds}
        if not self._lanes:
            raise ValueError("a worker needs at least one kind of job to run")
        self._timing = timing
        self._running: dict[UUID, Running] = {}
        self._outcomes = Outcomes()
        self._writing: Outcomes | None = None
        self._writer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        self._check_leases = asyncio.Event()
        self._stopping = False
        self._draining = False
        self.metrics = WorkerMetrics(self._lanes)
        self.listener = Listener(
            listen_url,
            channels={JOBS_CHANNEL: self._notified, CANCEL_CHANNEL: self._canceled},
            on_connect=self._listening,
            application_name=WORKER_APPLICATION,
        )

    @property
    def kinds(self) -> list[str]:
        return list(self._lanes)

    @property
    def concurrency(self) -> int:
        return sum(lane.kind.slots for lane in self._lanes.values())

    # Control

    def stop(self) -> None:
        """Stop claiming and finish the running jobs within the grace period; a second call
        skips what is left of it. Either way, unfinished jobs are handed back."""
        if self._stopping:
            self._hurry.set()
        self._stopping = True
        self._wake.set()

    def _notified(self, payload: str) -> None:
        """Jobs of kind `payload` were enqueued or became due again (empty: any kind)."""
        lane = self._lanes.get(payload)
        if lane is not None:
            lane.maybe_waiting = True
            self._wake.set()
        elif not payload:
            self._all_maybe_waiting()

    def _all_maybe_waiting(self) -> None:
        for lane in self._lanes.values():
            lane.maybe_waiting = True
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
        self._all_maybe_waiting()

    def _interrupt(self, running: Running, reason: StopReason) -> None:
        if running.stop_reason is None and running.task is not None:
            running.stop_reason = reason
            running.task.cancel()

    # The loop

    async def run(self, *, drain: bool = False) -> None:
        """Process jobs until `stop()`; with `drain=True`, until no job is due or running."""
        self._draining = drain
        logs.worker_id.set(self.id)
        # Opens no connection yet (min_size 0): cannot fail because PostgreSQL is down.
        self._claim_pool = await db.create_pool(
            self._listen_url, size=1, application_name=WORKER_APPLICATION, durable_commits=False
        )
        listening = None if drain else asyncio.create_task(self.listener.run())
        beating = asyncio.create_task(self._heartbeat_forever())
        log.info(
            "worker %s started (%s)",
            self.id,
            ", ".join(f"{name} ×{lane.kind.slots}" for name, lane in self._lanes.items()),
            extra={"action": "worker_started"},
        )
        self._wake.set()
        try:
            while not self._stopping:
                await self._sleep_until_woken()
                self._wake.clear()
                if self._stopping:
                    break
                await self._claim_while_room()
                if drain and self._idle() and all(lane.next_due is None for lane in self._lanes.values()):
                    break
        finally:
            await self._shut_down()
            for task in (listening, beating):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            with contextlib.suppress(*DATABASE_ERRORS):
                await db.with_retries(lambda: unregister(self._pool, worker_id=self.id), deadline=2)
            try:
                await asyncio.wait_for(self._claim_pool.close(), timeout=2)
            except TimeoutError:
                self._claim_pool.terminate()
            log.info("worker %s stopped", self.id, extra={"action": "worker_stopped"})

    def _idle(self) -> bool:
        """Nothing running, nothing left to write, no kind known to have due jobs."""
        return (
            not self._running
            and not self._outcomes
            and self._writing is None
            and not any(lane.maybe_waiting for lane in self._lanes.values())
        )

    async def _sleep_until_woken(self) -> None:
        timeout = self._timing.poll_interval * random.uniform(0.8, 1.2)
        due = [lane.next_due for lane in self._lanes.values() if lane.next_due is not None]
        if due:
            until_due = (min(due) - datetime.now(UTC)).total_seconds()
            # At least 50 ms: a due job may be locked by another transaction for a while.
            timeout = max(0.05, min(timeout, until_due + 0.005))
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            if not self._mark_due():
                self._all_maybe_waiting()  # the safety sweep
        else:
            self._mark_due()

    def _mark_due(self) -> bool:
        """Kinds whose earliest waiting job is due now may be claimed; True if there were any."""
        now = datetime.now(UTC) + timedelta(milliseconds=5)
        marked = False
        for lane in self._lanes.values():
            if lane.next_due is not None and lane.next_due <= now:
                lane.next_due = None
                lane.maybe_waiting = marked = True
        return marked

    async def _claim_while_room(self) -> None:
        claim_pool = self._claim_pool
        if claim_pool is None:  # not running
            return
        while not self._stopping:
            wanted = {
                name: lane.free for name, lane in self._lanes.items() if lane.maybe_waiting and lane.free > 0
            }
            if not wanted:
                return
            started = time.perf_counter()
            try:
                jobs = await queue.claim(
                    claim_pool, worker_id=self.id, wanted=wanted, lease_seconds=self._timing.lease_seconds
                )
            except DATABASE_ERRORS as exc:
                log.warning("claim failed: %s", exc, extra={"action": "claim_failed"})
                retry_at = datetime.now(UTC) + _jittered(1.0)
                for kind in wanted:
                    self._lanes[kind].next_due = retry_at
                    self._lanes[kind].maybe_waiting = False
                return
            self.metrics.claim_time.observe(time.perf_counter() - started)
            got = dict.fromkeys(wanted, 0)
            verbose = log.isEnabledFor(logging.INFO)
            for job in jobs:
                got[job.kind] += 1
                self._start(job, self._lanes[job.kind], verbose)
            short = []
            for kind, n in wanted.items():
                if got[kind]:
                    self.metrics.jobs[kind, "claimed"].inc(got[kind])
                if got[kind] < n:
                    self._lanes[kind].maybe_waiting = False
                    short.append(kind)
            if short:
                await self._schedule_next_due(short)
            if len(short) == len(wanted):
                return

    async def _schedule_next_due(self, kinds: list[str]) -> None:
        """Sleep no longer than until the earliest waiting job of these kinds (a scheduled
        retry) is due."""
        try:
            due = await queue.next_due(self._pool, kinds=kinds)
        except DATABASE_ERRORS:
            retry_at = datetime.now(UTC) + _jittered(1.0)
            due = dict.fromkeys(kinds, retry_at)
        for kind in kinds:
            self._lanes[kind].next_due = due.get(kind)

    def _start(self, job: Job, lane: Lane, verbose: bool) -> None:
        """Run a claimed job: a plain-function handler here and now, an async one in a task."""
        kind = job.kind
        self.metrics.pickup[kind].observe(max(0.0, (job.started_at - job.run_at).total_seconds()))
        if verbose:
            log.info(
                "claimed %s job %s (attempt %d of %d)",
                kind,
                job.id,
                job.attempts,
                job.max_attempts,
                extra={"action": "job_claimed", "job_id": str(job.id)},
            )
        if self._running:
            stale = self._running.get(job.id)
            if stale is not None and stale.job.attempts == job.attempts:
                # The claim of the run still going was lost in a crash of PostgreSQL (see
                # _claim_pool) and this worker claimed the job again, under the same attempt
                # number: stop the old run; its writes would pass the same fence. (A retry or
                # a reclaim comes back with the next attempt number: its old run is only
                # writing an outcome the fence already settles.)
                self._interrupt(stale, "lost")
        started = time.perf_counter()
        try:
            result: Any = lane.kind.handler(job)
        except Exception as exc:
            result = exc
        if result is not None and inspect.isawaitable(result):
            running = Running(job, lane)
            self._running[job.id] = running
            lane.busy += 1
            self.metrics.in_flight[kind].inc()
            running.task = asyncio.create_task(self._execute(running, result))
            return
        self.metrics.run_time[kind].observe(time.perf_counter() - started)
        self._settle(job, lane, result)

    # One job

    async def _execute(self, running: Running, work: Awaitable[Any]) -> None:
        job, lane = running.job, running.lane
        started = time.perf_counter()
        outcome: Any
        try:
            async with asyncio.timeout(lane.kind.timeout) as limit:
                outcome = await work
        except asyncio.CancelledError:
            reason = running.stop_reason
            if reason is None:
                raise
            log.info(
                "stopped job %s: %s", job.id, reason, extra={"action": f"job_{reason}", "job_id": str(job.id)}
            )
            if reason != "shutdown":
                self.metrics.jobs[job.kind, reason].inc()
            return
        except TimeoutError as exc:
            # Only JOB_TIMEOUT (the kind's) reads "timed out after"; a timeout inside the handler
            # (a slow call it gave up on) is its own failure.
            outcome = Retry(f"timed out after {lane.kind.timeout:g}s") if limit.expired() else exc
        except Exception as exc:
            outcome = exc
        finally:
            self.metrics.run_time[job.kind].observe(time.perf_counter() - started)
            lane.busy -= 1
            self.metrics.in_flight[job.kind].dec()
            if self._running.get(job.id) is running:
                del self._running[job.id]
            if lane.maybe_waiting or (self._draining and not self._running):
                self._wake.set()
        self._settle(job, lane, outcome)

    def _settle(self, job: Job, lane: Lane, outcome: Any) -> None:
        """Queue the outcome of an attempt for writing."""
        if isinstance(outcome, OwnershipLost):
            log.warning("lost job %s", job.id, extra={"action": "job_lost", "job_id": str(job.id)})
            self.metrics.jobs[job.kind, "lost"].inc()
            return
        if not isinstance(outcome, BaseException):
            self._outcomes.completed.append(job)
        elif isinstance(outcome, Fail):
            self._outcomes.failed.append((job, outcome.reason))
        else:
            at_least = 0.0
            if isinstance(outcome, Retry):
                reason, after, at_least = outcome.reason, outcome.after, outcome.at_least or 0.0
            else:
                log.error(
                    "handler crashed on job %s",
                    job.id,
                    exc_info=outcome,
                    extra={"action": "job_crashed", "job_id": str(job.id)},
                )
                reason, after = f"internal error: {type(outcome).__name__}: {outcome}", None
            if job.attempts >= job.max_attempts:
                self._outcomes.failed.append((job, reason))
            else:
                delay = max(at_least, lane.kind.backoff.delay(job.attempts) if after is None else after)
                self._outcomes.retried.append((job, reason, delay))
        lane.writing += 1
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_outcomes())

    async def _write_outcomes(self) -> None:
        """Write waiting outcomes, a batch per statement, while any wait; a batch waits for the
        one before it, so outcomes that arrive meanwhile go out together."""
        try:
            while self._outcomes:
                batch, self._outcomes = self._outcomes, Outcomes()
                self._writing = batch
                try:
                    await self._write(batch)
                except Exception:
                    # Never let the writer die: the jobs' leases lapse and they are reclaimed.
                    log.exception("writing outcomes crashed", extra={"action": "job_outcome_unrecorded"})
                finally:
                    self._writing = None
                    for job in batch.jobs():
                        self._lanes[job.kind].writing -= 1
                    self._wake.set()
        finally:
            self._writer = None

    async def _write(self, batch: Outcomes) -> None:
        for event, jobs, write in (
            (
                "completed",
                batch.completed,
                lambda: queue.complete_many(
                    self._pool, worker_id=self.id, jobs=[(job.id, job.attempts) for job in batch.completed]
                ),
            ),
            (
                "failed",
                [job for job, _ in batch.failed],
                lambda: queue.fail_many(
                    self._pool,
                    worker_id=self.id,
                    jobs=[(job.id, job.attempts, error) for job, error in batch.failed],
                ),
            ),
            (
                "retried",
                [job for job, *_ in batch.retried],
                lambda: queue.retry_many(
                    self._pool,
                    worker_id=self.id,
                    jobs=[(job.id, job.attempts, error, delay) for job, error, delay in batch.retried],
                ),
            ),
        ):
            if jobs:
                owned = await self._record(write, jobs)
                self._report(event, jobs, owned, batch)

    async def _record(self, write: Any, jobs: list[Job]) -> set[UUID]:
        """Write a batch of outcomes, riding out a database outage for up to one lease (after
        that the leases lapse and the jobs are reclaimed anyway); the ids still owned."""
        try:
            return await db.with_retries(write, deadline=self._timing.lease_seconds)
        except DATABASE_ERRORS as exc:
            log.warning(
                "could not record the outcome of %d jobs: %s",
                len(jobs),
                exc,
                extra={"action": "job_outcome_unrecorded"},
            )
            return set()

    def _report(self, event: str, jobs: list[Job], owned: set[UUID], batch: Outcomes) -> None:
        verbose = log.isEnabledFor(logging.INFO)
        errors = {job.id: error for job, error in batch.failed} if verbose else {}
        retries = {job.id: (error, delay) for job, error, delay in batch.retried} if verbose else {}
        counts: dict[str, int] = {}
        for job in jobs:
            if job.id not in owned:
                log.warning(
                    "lost job %s before recording it",
                    job.id,
                    extra={"action": "job_lost", "job_id": str(job.id)},
                )
                self.metrics.jobs[job.kind, "lost"].inc()
                continue
            counts[job.kind] = counts.get(job.kind, 0) + 1
            if not verbose:
                continue
            extra = {"job_id": str(job.id)}
            if event == "completed":
                log.info("completed job %s", job.id, extra={"action": "job_completed", **extra})
            elif event == "failed":
                log.info("failed job %s: %s", job.id, errors[job.id], extra={"action": "job_failed", **extra})
            else:
                error, delay = retries[job.id]
                log.info(
                    "job %s attempt %d failed, retrying in %.1fs: %s",
                    job.id,
                    job.attempts,
                    delay,
                    error,
                    extra={"action": "job_retried", **extra},
                )
        for kind, count in counts.items():
            self.metrics.jobs[kind, event].inc(count)

    # Leases and heartbeat

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
        """Renew the leases of every job this worker holds (running, or its outcome being
        written) in one statement, stop the runs it no longer owns, and say it is alive."""
        held = {running.job.id: running.job for running in self._running.values()}
        for outcomes in (self._outcomes, self._writing):
            for job in outcomes.jobs() if outcomes is not None else ():
                held[job.id] = job
        if held:
            owned = await queue.renew_leases(
                self._pool,
                worker_id=self.id,
                jobs=[(job.id, job.attempts) for job in held.values()],
                lease_seconds=self._timing.lease_seconds,
            )
            for job_id in held.keys() - owned:
                running = self._running.get(job_id)
                if running is not None and running.job.attempts == held[job_id].attempts:
                    self._interrupt(running, "lost")
        await heartbeat(
            self._pool,
            worker_id=self.id,
            concurrency=self.concurrency,
            running=len(self._running),
            kinds=self.kinds,
        )

    # Shutdown

    async def _shut_down(self) -> None:
        """Let running jobs finish within the grace period (cut short by a second stop), then
        stop the rest and hand them straight back to the queue; write every outcome."""
        if self._running:
            await self._let_running_finish()
        while self._writer is not None:
            await asyncio.shield(self._writer)

    async def _let_running_finish(self) -> None:
        tasks = [running.task for running in self._running.values() if running.task is not None]
        log.info(
            "waiting up to %gs for %d running job%s",
            self._timing.shutdown_grace,
            len(tasks),
            "" if len(tasks) == 1 else "s",
            extra={"action": "worker_draining"},
        )
        all_done = asyncio.ensure_future(asyncio.wait(tasks))
        hurry = asyncio.ensure_future(self._hurry.wait())
        await asyncio.wait(
            [all_done, hurry], timeout=self._timing.shutdown_grace, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in (all_done, hurry):
            waiter.cancel()
        unfinished = [
            running for running in self._running.values() if running.task and not running.task.done()
        ]
        if not unfinished:
            return
        for running in unfinished:
            self._interrupt(running, "shutdown")
        await asyncio.wait([running.task for running in unfinished if running.task is not None])
        held = [(running.job.id, running.job.attempts) for running in unfinished]
        try:
            handed = await db.with_retries(
                lambda: queue.hand_back(self._pool, worker_id=self.id, jobs=held), deadline=5
            )
        except DATABASE_ERRORS as exc:
            log.warning(
                "could not hand back %d jobs (their leases will lapse): %s",
                len(held),
                exc,
                extra={"action": "hand_back_failed"},
            )
            return
        kinds = {running.job.id: running.job.kind for running in unfinished}
        for job_id in handed:
            self.metrics.jobs[kinds[job_id], "handed_back"].inc()
            log.info("handed back job %s", job_id, extra={"action": "job_handed_back", "job_id": str(job_id)})


async def heartbeat(
    conn: queue.Connection, *, worker_id: str, concurrency: int, running: int, kinds: list[str]
) -> None:
    await conn.execute(queries.worker_heartbeat, worker_id, HOST, os.getpid(), concurrency, running, kinds)


async def unregister(conn: queue.Connection, *, worker_id: str) -> None:
    await conn.execute(queries.worker_delete, worker_id)


def _jittered(seconds: float) -> timedelta:
    return timedelta(seconds=seconds * random.uniform(0.5, 1.5))
