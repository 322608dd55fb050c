"""Generation jobs as the API sees them: create, read, list, cancel. A generation is a queue job
of kind `generate` (watched: its changes feed event streams) plus a `generations` row saying
what it asks for. One function per query in sql/generations.sql.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from app import db
from app.batching import Batcher
from app.images.providers import NAMES
from app.queue import jobs as queue
from app.queue.kinds import Status
from app.sql import queries

KIND = "generate"
"""The generation kind of the local renderer; each HTTP provider has its own (`kind_for`)."""


def kind_for(provider: str) -> str:
    """The kind of a generation made by `provider`: `generate` for the local renderer (every
    generation made before providers existed), `generate-<provider>` for the others."""
    return KIND if provider == "local" else f"{KIND}-{provider}"


KINDS = [kind_for(provider) for provider in NAMES]
"""Every generation kind."""

Connection = db.Executor


@dataclass(slots=True)
class Generation:
    """A generation job: what it asks for, its job's status, and its stored images' indexes."""

    id: UUID
    status: Status
    num_images: int
    animal: str
    error: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    prompt: str | None = None
    """The text sent to the model (None: made before providers existed)."""
    provider: str = "local"
    model: str | None = None
    image_indexes: list[int] = field(default_factory=list)
    webhook: str | None = None
    """The URL its changes are POSTed to, if it asked for one."""
    webhook_events: list[str] | None = None
    """Which changes are (start, image, completed); None without a webhook."""
    image_types: list[str] = field(default_factory=list)
    """The content type of each stored image, in the order of `image_indexes`."""

    @classmethod
    def from_record(cls, record: Any) -> Generation:
        return cls(
            id=record["id"],
            status=Status(record["status"]),
            num_images=record["num_images"],
            animal=record["animal"],
            error=record["error"],
            attempts=record["attempts"],
            created_at=record["created_at"],
            updated_at=record["updated_at"],
            started_at=record["started_at"],
            finished_at=record["finished_at"],
            prompt=record["prompt"],
            provider=record["provider"],
            model=record["model"],
            image_indexes=list(record["image_indexes"]),
            webhook=record["webhook"],
            webhook_events=None if record["webhook_events"] is None else list(record["webhook_events"]),
            image_types=list(record["image_types"]),
        )


@dataclass(frozen=True, slots=True)
class Request:
    """What a client asks for, `num_images` pictures of `animal`; `owner`: the key asking
    (keys.id), None without one; and what the server's settings fix for it: the prompt sent,
    the provider and the model."""

    num_images: int
    animal: str
    max_attempts: int
    webhook: str | None = None
    """Where to POST its changes (checked by the caller), or None."""
    webhook_events: tuple[str, ...] = ()
    webhook_max_attempts: int = 1
    """Attempts each of its webhook deliveries gets."""
    owner: int | None = None
    prompt: str | None = None
    provider: str = "local"
    model: str | None = None


@db.translated
async def create_many(conn: Connection, requests: Sequence[Request]) -> list[Generation]:
    """Create generation jobs in one statement (their queue jobs, one NOTIFY, what each asks
    for); in the order of `requests`."""
    ids = [uuid.uuid4() for _ in requests]
    rows = await conn.fetch(
        queries.generation_create_many,
        ids,
        [request.animal for request in requests],
        [request.num_images for request in requests],
        [request.max_attempts for request in requests],
        [request.owner for request in requests],
        [request.webhook for request in requests],
        [",".join(request.webhook_events) for request in requests],
        [request.webhook_max_attempts for request in requests],
        [kind_for(request.provider) for request in requests],
        [request.prompt for request in requests],
        [request.provider for request in requests],
        [request.model for request in requests],
    )
    created = {row[0]: row[1] for row in rows}
    return [
        Generation(
            id=job_id,
            status=Status.PENDING,
            num_images=request.num_images,
            animal=request.animal,
            error=None,
            attempts=0,
            created_at=created[job_id],
            updated_at=created[job_id],
            started_at=None,
            finished_at=None,
            webhook=request.webhook,
            webhook_events=list(request.webhook_events) if request.webhook else None,
            prompt=request.prompt,
            provider=request.provider,
            model=request.model,
        )
        for job_id, request in zip(ids, requests, strict=True)
    ]


def creations(pool: asyncpg.Pool, *, max_batch: int = 500) -> Batcher[Request, Generation]:
    """Creates jobs for concurrent requests together (see app/batching.py): one statement,
    one commit and one NOTIFY for all the requests that arrive while the previous one runs."""

    async def write(batch: list[Request]) -> list[Generation]:
        return await create_many(pool, batch)

    return Batcher(write, max_batch=max_batch)


@db.translated
async def get(conn: Connection, *, job_id: UUID, viewer: int | None = None) -> Generation | None:
    """The generation, if key `viewer` owns it (None: whoever owns it)."""
    row = await conn.fetchrow(queries.generation_get, job_id, viewer)
    return None if row is None else Generation.from_record(row)


async def at_version(conn: Connection, *, job_id: UUID, version: int) -> Generation | None:
    """The generation as it was right after its change number `version` (see
    generation_at_version); None when the job or that change is unknown."""
    row = await conn.fetchrow(queries.generation_at_version, job_id, version)
    return None if row is None else Generation.from_record(row)


@db.translated
async def cancel(conn: Connection, *, job_id: UUID, viewer: int | None = None) -> bool:
    """Cancel the job if it is pending or processing (and key `viewer` owns it, unless None);
    False when unknown, another key's, or already finished."""
    return await conn.fetchval(queries.generation_cancel, job_id, viewer) is not None


@db.translated
async def pending_count(conn: Connection, *, cap: int, kind: str = KIND) -> int:
    """Generations of `kind` waiting, counted no further than `cap`."""
    return await queue.pending_count(conn, kind=kind, cap=cap)


@db.translated
async def queue_depth(conn: Connection, *, kind: str = KIND) -> asyncpg.Record:
    """(pending, processing, oldest_due, now) of generations of `kind`."""
    return await queue.depth(conn, kind=kind)


async def forget(conn: db.Connection, job_ids: list[UUID]) -> None:
    """Retention deleted these jobs: delete their generations, with their images."""
    await conn.execute(queries.generation_forget, job_ids)


@dataclass(frozen=True, slots=True)
class Change:
    """A recorded event of a job: its id (ordered), its type, and for a generation the job as
    it is now (None for another kind's event)."""

    event_id: int
    type: str
    job: Generation | None


@db.translated
async def events_after(
    conn: Connection, *, after: int, limit: int, viewer: int | None = None
) -> tuple[list[Change], str | None]:
    """Up to `limit` events after id `after`, in id order, of every kind (the job only for
    generations key `viewer` owns; None: all); and the snapshot they were read under (None
    when there were none)."""
    rows = await conn.fetch(queries.generation_events_after, after, limit, viewer)
    changes = [
        Change(row["event_id"], row["type"], None if row["id"] is None else Generation.from_record(row))
        for row in rows
    ]
    return changes, rows[0]["snapshot"] if rows else None


@dataclass(frozen=True, slots=True)
class Moment:
    """One recorded change of a job: created, started (its attempt), progress (an image),
    retrying (the error), completed, failed, canceled, requeued."""

    type: str
    status: str
    data: dict[str, Any] | None
    at: datetime


@db.translated
async def history(conn: Connection, *, job_id: UUID, viewer: int | None = None) -> list[Moment]:
    """Every recorded change of a generation, oldest first (empty for an unknown job, or one
    key `viewer` does not own)."""
    rows = await conn.fetch(queries.generation_history, job_id, viewer)
    return [
        Moment(
            row["type"], row["status"], None if row["data"] is None else json.loads(row["data"]), row["at"]
        )
        for row in rows
    ]


FIRST_PAGE = (datetime.max.replace(tzinfo=UTC), UUID(int=2**128 - 1))
"""A cursor after every job: where the first page starts."""


def list_statement(
    status: Status | None, after: tuple[datetime, UUID] | None, limit: int, viewer: int | None = None
) -> tuple[str, tuple[Any, ...]]:
    """The listing query for `status` (None: every job) and its arguments, for key `viewer`'s
    jobs (None: everyone's). Each has the query that reads the right index, even in a generic
    plan."""
    created_at, job_id = after or FIRST_PAGE
    if status is None:
        if viewer is not None:
            return queries.generation_list_owned, (created_at, job_id, limit, viewer)
        return queries.generation_list, (created_at, job_id, limit)
    if status is Status.COMPLETED:
        if viewer is not None:
            return queries.generation_list_completed_owned, (created_at, job_id, limit, viewer)
        return queries.generation_list_completed, (created_at, job_id, limit)
    if status in (Status.PENDING, Status.PROCESSING):
        return queries.generation_list_waiting, (
            status is Status.PROCESSING,
            created_at,
            job_id,
            limit,
            viewer,
            KINDS,
        )
    return queries.generation_list_unsuccessful, (status.value, created_at, job_id, limit, viewer, KINDS)


@db.translated
async def list_page(
    conn: Connection,
    *,
    status: Status | None,
    after: tuple[datetime, UUID] | None,
    limit: int,
    viewer: int | None = None,
) -> list[Generation]:
    """Newest first; `after` is the (created_at, id) of the last job of the previous page.
    Only the generations key `viewer` owns (None: every one)."""
    query, args = list_statement(status, after, limit, viewer)
    return [Generation.from_record(row) for row in await conn.fetch(query, *args)]
