"""What an operator sees of the queue at a glance: per kind, the jobs waiting and running and
how long the head of the queue has waited; the live workers; failures in the last hour. Read
from the operator views (migration 0006) where they are cheap, from job_queue where a view
would count every finished job."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from app import db
from app.sql import queries


@dataclass(frozen=True, slots=True)
class KindLoad:
    kind: str
    pending: int
    processing: int
    due: int
    longest_wait_seconds: float | None
    """How long the oldest due waiting job has waited since it fell due; None when none is due."""


@dataclass(frozen=True, slots=True)
class LiveWorker:
    id: str
    host: str
    pid: int
    kinds: list[str]
    running: int
    concurrency: int
    started_at: datetime
    last_seen_at: datetime
    seconds_since_heartbeat: float
    processing_jobs: int


@dataclass(frozen=True, slots=True)
class Overview:
    kinds: list[KindLoad]
    workers: list[LiveWorker]
    failed_last_hour: int
    retrying_last_hour: int


@db.translated
async def read(conn: db.Executor) -> Overview:
    """The queue now: three short statements (each kind's load, live workers, failures)."""
    kinds = await conn.fetch(queries.queue_overview_kinds)
    workers = await conn.fetch(queries.queue_overview_workers)
    failures = await conn.fetchrow(queries.queue_overview_failures)
    return Overview(
        kinds=[KindLoad(**dict(row)) for row in kinds],
        workers=[LiveWorker(**{**dict(row), "kinds": list(row["kinds"])}) for row in workers],
        failed_last_hour=failures["failed"] if failures else 0,
        retrying_last_hour=failures["retrying"] if failures else 0,
    )
