"""Housekeeping beside the worker loop: rounds that each run every so often, in every worker
process, and never stop running.

The queue brings its own rounds (`queue_rounds`): reclaiming lapsed leases, forgetting dead
workers, rotating job_queue's partitions, and retention of finished jobs. Other layers add
theirs at the entry point (the API forgets expired Idempotency-Keys; a kind forgets its own
data when retention deletes its jobs, through `Forget`). A round that raises is logged with its
traceback and counted, and runs again at its next turn: one failure never ends it.

Rounds that should run in one worker at a time take an advisory lock or use SKIP LOCKED.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from app.queue import jobs as queue
from app.queue.kinds import AfterCommit, Forget
from app.sql import queries

log = logging.getLogger(__name__)

RETENTION_LOCK = 7301
"""Advisory lock key of the retention round (pg_locks: locktype advisory, objid 7301)."""
PAUSE = 0.1
"""Seconds between two batches of one round, leaving room for the queue's own statements."""


@dataclass(frozen=True)
class Round:
    name: str
    every: float
    """Seconds between two runs, jittered by ±20% so that workers started together spread out."""
    run: Callable[[], Awaitable[object]]


class Maintenance:
    def __init__(self, rounds: Sequence[Round], *, on_failure: Callable[[str], None] | None = None) -> None:
        self.rounds = list(rounds)
        self._on_failure = on_failure

    async def run(self) -> None:
        """Run every round on its schedule until cancelled."""
        async with asyncio.TaskGroup() as group:
            for round_ in self.rounds:
                group.create_task(self._keep_running(round_), name=f"maintenance-{round_.name}")

    async def _keep_running(self, round_: Round) -> None:
        while True:
            await asyncio.sleep(round_.every * random.uniform(0.8, 1.2))
            await self.run_once(round_)

    async def run_once(self, round_: Round) -> bool:
        """Run one round now; False (logged with its traceback) when it raised."""
        try:
            await round_.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("maintenance round %s failed", round_.name, extra={"action": "maintenance_failed"})
            if self._on_failure is not None:
                self._on_failure(round_.name)
            return False
        return True


@dataclass(frozen=True)
class Rotation:
    """When job_queue's oldest partition is emptied and truncated (see migration 0006)."""

    every: float = 1.0
    """Seconds between two checks."""
    min_dead: int = 300
    """Dead rows in the queue's partitions (an estimate from PostgreSQL's statistics) worth a
    rotation: with fewer, VACUUM keeps up and rotating would only cost a pause."""
    max_move: int = 1_000
    """Live rows in the oldest partition beyond which it is left for later (a backlog)."""
    held_for: float = 10.0
    """How long a transaction must have held back VACUUM's horizon before rotating is worth its
    pause: with no such transaction VACUUM removes dead rows (and index scans skip the ones it
    has not reached yet); rotation is for when it cannot."""
    lock_wait: float = 0.1
    """Longest wait for the oldest partition's lock; while waiting, the queue's statements wait
    too, so this is short, and a rotation that cannot get the lock is simply tried again."""


def queue_rounds(
    pool: asyncpg.Pool,
    *,
    lease_seconds: float,
    retention_days: float,
    retention_batch: int,
    forget: Mapping[str, Forget | None],
    on_reclaimed: Callable[[str], None] | None = None,
    rotation: Rotation = Rotation(),
    retention_every: float = 600.0,
) -> list[Round]:
    """The queue's own rounds."""

    async def reclaim() -> None:
        """Jobs whose lease lapsed go back to waiting (or fail, out of attempts)."""
        while True:
            rows = await queue.reclaim_expired(pool, limit=100)
            for row in rows:
                if on_reclaimed is not None:
                    on_reclaimed(row["kind"])
                log.warning(
                    "reclaimed %s job %s from %s: now %s",
                    row["kind"],
                    row["id"],
                    row["worker_id"],
                    row["status"],
                    extra={"action": "job_reclaimed", "job_id": str(row["id"])},
                )
            if len(rows) < 100:
                return

    async def forget_dead_workers() -> None:
        await pool.execute(queries.worker_delete_dead, lease_seconds * 3)

    async def rotate() -> None:
        moved = await queue.rotate(
            pool,
            max_move=rotation.max_move,
            min_dead=rotation.min_dead,
            min_interval=rotation.every,
            lock_wait=rotation.lock_wait,
            held_for=rotation.held_for,
        )
        if moved is not None:
            log.debug(
                "rotated the queue's partitions, %d jobs moved", moved, extra={"action": "queue_rotated"}
            )

    async def retention() -> None:
        await delete_finished(pool, older_than_days=retention_days, batch_size=retention_batch, forget=forget)

    rounds = [
        Round("reclaim", lease_seconds / 3, reclaim),
        Round("dead-workers", lease_seconds, forget_dead_workers),
        Round("rotate", rotation.every, rotate),
    ]
    if retention_days > 0:
        rounds.append(Round("retention", retention_every, retention))
    return rounds


async def delete_finished(
    pool: asyncpg.Pool,
    *,
    older_than_days: float,
    forget: Mapping[str, Forget | None],
    batch_size: int = 500,
    max_batches: int | None = None,
    pause: float = PAUSE,
) -> int:
    """Delete jobs of the kinds in `forget` finished more than `older_than_days` days ago,
    `batch_size` per transaction, with what each kind keeps of them (its `forget` hook, None
    when it keeps nothing; what a hook returns runs once its batch commits), until none is
    left or `max_batches` ran; return how many. Only one worker sweeps at a time: each batch first takes a transaction-level advisory
    lock without waiting, and the sweep stops when another worker holds it. A transaction lock,
    not a session one: pool connections carry no session state, and it ends with its
    transaction however that ends. Between two batches another worker may take over, which is
    harmless: a batch deletes only rows it locked itself (SKIP LOCKED)."""
    deleted = batches = 0
    while older_than_days > 0 and (max_batches is None or batches < max_batches):
        after_commit: list[AfterCommit] = []
        async with pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(queries.maintenance_try_lock, RETENTION_LOCK):
                log.debug("another worker is sweeping", extra={"action": "retention_busy"})
                break
            gone = await queue.delete_finished(
                conn, older_than_days=older_than_days, limit=batch_size, kinds=list(forget)
            )
            by_kind: dict[str, list[UUID]] = defaultdict(list)
            for job_id, kind in gone:
                by_kind[kind].append(job_id)
            for kind, ids in by_kind.items():
                hook = forget.get(kind)
                then = None if hook is None else await hook(conn, ids)
                if then is not None:
                    after_commit.append(then)
        for then in after_commit:
            try:
                await then()
            except Exception:  # what it left behind is the kind's to sweep later
                log.exception("after deleting jobs", extra={"action": "retention_after_commit_failed"})
        deleted += len(gone)
        batches += 1
        if len(gone) < batch_size:
            break
        await asyncio.sleep(pause)
    if deleted:
        log.info(
            "deleted %d jobs finished over %g days ago",
            deleted,
            older_than_days,
            extra={"action": "retention_deleted"},
        )
    return deleted
