"""Stored images: one function per query in sql/images.sql."""

from __future__ import annotations

import hashlib
from uuid import UUID

from app import db
from app.sql import queries


async def store(
    conn: db.Executor,
    *,
    job_id: UUID,
    worker_id: str,
    attempt: int,
    index: int,
    png: bytes,
) -> bool:
    """Store one image if the worker still owns this attempt of the job; say whether it did."""
    digest = hashlib.sha256(png).hexdigest()
    stored: bool = await conn.fetchval(queries.image_store, job_id, worker_id, attempt, index, png, digest)
    return stored


@db.translated
async def get(
    conn: db.Executor, *, job_id: UUID, index: int, viewer: int | None = None
) -> tuple[bytes, str] | None:
    """The PNG and its sha256, or None (also when key `viewer` does not own the job; None:
    whoever owns it)."""
    row = await conn.fetchrow(queries.image_get, job_id, index, viewer)
    return None if row is None else (row["png"], row["sha256"])
