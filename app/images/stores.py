"""Stored images: one function per query in sql/images.sql."""

from __future__ import annotations

import hashlib
from typing import NamedTuple
from uuid import UUID

from app import db
from app.images.providers import Image
from app.sql import queries

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
"""The extension of an image's URL, by its type: `/images/{job}/{index}.{extension}`."""


class Stored(NamedTuple):
    """An image as it is served."""

    data: bytes
    sha256: str
    content_type: str


async def store(
    conn: db.Executor,
    *,
    job_id: UUID,
    worker_id: str,
    attempt: int,
    index: int,
    image: Image,
    provider: str | None = None,
    model: str | None = None,
    latency_ms: int | None = None,
) -> bool:
    """Store one image, as the provider sent it and with where it came from, if the worker
    still owns this attempt of the job; say whether it did."""
    digest = hashlib.sha256(image.data).hexdigest()
    stored: bool = await conn.fetchval(
        queries.image_store,
        job_id,
        worker_id,
        attempt,
        index,
        image.data,
        digest,
        image.content_type,
        provider,
        model,
        image.request_id,
        latency_ms,
    )
    return stored


@db.translated
async def get(conn: db.Executor, *, job_id: UUID, index: int, viewer: int | None = None) -> Stored | None:
    """The image, its sha256 and its type, or None (also when key `viewer` does not own the
    job; None: whoever owns it)."""
    row = await conn.fetchrow(queries.image_get, job_id, index, viewer)
    return None if row is None else Stored(row["png"], row["sha256"], row["content_type"])
