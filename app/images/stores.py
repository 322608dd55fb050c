"""Where images are kept: the `ImageStore` seam, the `postgres` store (the bytes in the image's
row, the zero-setup default) and the image rows (sql/images.sql). The `s3` store, an
S3-compatible bucket, is app/images/s3.py.

Storing is two steps: the store puts the bytes (an s3 store writes the object now), then
`record` writes the row, only while the worker still owns its attempt of the job. The row says
which store holds the bytes, so images written before IMAGE_STORE changed keep serving.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from app import db
from app.images import generations
from app.queue.kinds import AfterCommit, Forget
from app.sql import queries

log = logging.getLogger(__name__)

POSTGRES = "postgres"

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
"""The extension of an image's URL, by its type: `/images/{job}/{index}.{extension}`."""


class StoreUnavailable(Exception):
    """The store cannot be reached now (down, timing out, refusing): worth trying again later."""


class StoreMisconfigured(Exception):
    """The store will not work as configured (no such bucket, credentials refused, nothing at
    the endpoint); the message names the setting."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a store put an image's bytes, as its row records it: an object `key`, or the
    bytes themselves (`png`) for the row to hold."""

    store: str
    key: str | None
    png: bytes | None


@dataclass(frozen=True, slots=True)
class Image:
    """A stored image's row: where its bytes are, their size and sha256 (the strong ETag)."""

    store: str
    key: str | None
    png: bytes | None
    size: int
    sha256: str
    content_type: str = "image/png"
    """image/png, image/jpeg or image/webp: as the provider sent it."""


class ImageStore(Protocol):
    name: str
    """What image rows written through it record as their store (`postgres`, `s3`)."""

    async def put(
        self, *, job_id: UUID, index: int, attempt: int, data: bytes, sha256: str, content_type: str
    ) -> Placement:
        """Keep the bytes of attempt `attempt`'s image `index`; raise StoreUnavailable when
        the store cannot be reached."""
        ...

    async def open(self, image: Image) -> AsyncIterator[bytes]:
        """The image's bytes, in chunks; the store has answered before this returns (raise
        StoreUnavailable here, not while streaming)."""
        ...

    async def url(self, image: Image, *, ttl: float) -> str | None:
        """A URL a client may fetch the bytes from for `ttl` seconds, or None when only this
        server can serve them."""
        ...

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete these objects (ones already gone are fine)."""
        ...

    async def check(self) -> None:
        """Raise StoreMisconfigured or StoreUnavailable unless the store answers now."""
        ...


class PostgresStore:
    """Bytes in the image's own row (`png`): nothing to set up, nothing more to back up."""

    name = POSTGRES

    async def put(
        self, *, job_id: UUID, index: int, attempt: int, data: bytes, sha256: str, content_type: str
    ) -> Placement:
        return Placement(POSTGRES, None, data)

    async def open(self, image: Image) -> AsyncIterator[bytes]:
        return _once(image.png or b"")

    async def url(self, image: Image, *, ttl: float) -> str | None:
        return None

    async def delete(self, keys: Sequence[str]) -> None:
        return None  # the bytes go with their rows

    async def check(self) -> None:
        return None  # the database's readiness is checked on its own


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


@dataclass(frozen=True)
class Stores:
    """The store new images go to (IMAGE_STORE), and every configured store by name, to read
    and delete images wherever an earlier setting put them."""

    writing: ImageStore
    by_name: Mapping[str, ImageStore]

    def of(self, image: Image) -> ImageStore:
        """The store holding `image`; StoreUnavailable when this process has none of that name
        (an s3 image, and S3_BUCKET unset)."""
        store = self.by_name.get(image.store)
        if store is None:
            raise StoreUnavailable(f"the image is in the {image.store} store, which is not configured here")
        return store


IN_DATABASE = Stores(writing=PostgresStore(), by_name={POSTGRES: PostgresStore()})
"""Images in their rows only (IMAGE_STORE=postgres, no S3_BUCKET)."""


async def save(
    pool: db.Executor,
    store: ImageStore,
    *,
    job_id: UUID,
    worker_id: str,
    attempt: int,
    index: int,
    png: bytes,
    content_type: str = "image/png",
    db_patience: float = 30.0,
    provider: str | None = None,
    model: str | None = None,
    request_id: str | None = None,
    latency_ms: int | None = None,
) -> bool:
    """Put the image's bytes in `store`, then record its row if the worker still owns this
    attempt of the job; say whether it did. The row's write rides out a database outage of up
    to `db_patience` seconds; StoreUnavailable when the store cannot take the bytes."""
    digest = hashlib.sha256(png).hexdigest()
    placed = await store.put(
        job_id=job_id, index=index, attempt=attempt, data=png, sha256=digest, content_type=content_type
    )

    async def write_row() -> bool:
        return await record(
            pool,
            job_id=job_id,
            worker_id=worker_id,
            attempt=attempt,
            index=index,
            placement=placed,
            size=len(png),
            sha256=digest,
            content_type=content_type,
            provider=provider,
            model=model,
            request_id=request_id,
            latency_ms=latency_ms,
        )

    return await db.with_retries(write_row, deadline=db_patience)


async def record(
    conn: db.Executor,
    *,
    job_id: UUID,
    worker_id: str,
    attempt: int,
    index: int,
    placement: Placement,
    size: int,
    sha256: str,
    content_type: str = "image/png",
    provider: str | None = None,
    model: str | None = None,
    request_id: str | None = None,
    latency_ms: int | None = None,
) -> bool:
    """Record one image, with its type and where it came from (the provider, its model and
    request id, the call's latency), if the worker still owns this attempt of the job; say
    whether it did."""
    owned: bool = await conn.fetchval(
        queries.image_record,
        job_id,
        worker_id,
        attempt,
        index,
        placement.store,
        placement.key,
        placement.png,
        size,
        sha256,
        content_type,
        provider,
        model,
        request_id,
        latency_ms,
    )
    return owned


@db.translated
async def get(conn: db.Executor, *, job_id: UUID, index: int, viewer: int | None = None) -> Image | None:
    """The image's row, or None (also when key `viewer` does not own the job; None: whoever
    owns it)."""
    row = await conn.fetchrow(queries.image_get, job_id, index, viewer)
    return (
        None
        if row is None
        else Image(row["store"], row["key"], row["png"], row["size"], row["sha256"], row["content_type"])
    )


async def forget(conn: db.Connection, job_ids: list[UUID]) -> dict[str, list[str]]:
    """Delete the images of these jobs (retention); the object keys of those kept as objects,
    by store."""
    keys: dict[str, list[str]] = {}
    for row in await conn.fetch(queries.image_forget, job_ids):
        keys.setdefault(row["store"], []).append(row["key"])
    return keys


def forgetting(stores: Stores) -> Forget:
    """The `generate` kind's retention hook: its generations with their image rows, then, once
    that commits, their objects (an object whose delete fails is an orphan: the orphan sweep
    deletes it at its next round)."""

    async def forget_jobs(conn: db.Connection, job_ids: list[UUID]) -> AfterCommit | None:
        objects = await forget(conn, job_ids)
        await generations.forget(conn, job_ids)
        if not objects:
            return None

        async def delete_objects() -> None:
            for name, keys in objects.items():
                store = stores.by_name.get(name)
                if store is None:
                    log.warning(
                        "%d objects of deleted jobs are in the %s store, which is not configured here",
                        len(keys),
                        name,
                        extra={"action": "objects_left"},
                    )
                    continue
                await store.delete(keys)

        return delete_objects

    return forget_jobs


async def known_keys(conn: db.Executor, keys: Sequence[str]) -> set[str]:
    """Of these object keys, those an image row points at."""
    return {row["key"] for row in await conn.fetch(queries.image_keys_known, list(keys))}
