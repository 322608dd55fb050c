"""The `s3` image store: images as objects of an S3-compatible bucket (AWS S3, MinIO,
SeaweedFS, Garage, R2), through obstore (bench/s3_clients.py measured it against aiobotocore:
faster for 1 MB puts and gets, and less than half the install).

An image's object is `{S3_PREFIX}{job_id}/{index}.{attempt}`: each attempt writes its own
object, so a worker that lost its job can never overwrite the bytes of the one that owns it
now. Such a worker's object has no row: the orphan sweep deletes objects under the prefix that
no row points at, once they are an hour old (a worker writes its row right after its object).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg
import obstore
import obstore.store
from obstore.exceptions import BaseError, NotFoundError

from app.images import stores
from app.images.stores import Image, ImageStore, Placement, StoreMisconfigured, Stores, StoreUnavailable
from app.settings import Settings
from app.sql import queries

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

log = logging.getLogger(__name__)

NAME = "s3"
MOVED_ATTEMPT = 0
"""The attempt in the key of an image moved from PostgreSQL (workers' attempts start at 1)."""
PROBE = ".menagerie-probe"
"""Listed (never written) under the prefix to see that the bucket answers."""
ORPHAN_AGE = 3600.0
"""Seconds an object with no row is left alone: a worker may be about to record it."""
ORPHAN_LOCK = 7302
"""Advisory lock key of the orphan sweep (pg_locks: locktype advisory, objid 7302)."""
DELETE_BATCH = 1000
"""Keys per delete request (S3's DeleteObjects takes at most 1,000)."""

CLIENT_OPTIONS: ClientConfig = {"connect_timeout": "2s", "timeout": "30s"}
RETRIES: RetryConfig = {
    "max_retries": 2,
    "retry_timeout": timedelta(seconds=5),
    "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=1), "base": 2},
}
"""A store that does not answer within seconds is down: the job is retried on its backoff and
a read answers 503, instead of holding them for obstore's default of three minutes."""


@dataclass(frozen=True)
class Config:
    bucket: str
    endpoint: str | None
    region: str
    prefix: str
    credentials: tuple[str, str, str | None] | None = field(repr=False)
    """(access key id, secret, session token); None: the client finds them (a role)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Config | None:
        """The bucket the settings name, or None when S3_BUCKET is unset."""
        if not settings.s3_bucket:
            return None
        endpoint = str(settings.s3_endpoint_url).rstrip("/") if settings.s3_endpoint_url else None
        return cls(
            bucket=settings.s3_bucket,
            endpoint=endpoint,
            region=settings.s3_region,
            prefix=settings.s3_prefix,
            credentials=settings.s3_credentials(),
        )

    def where(self) -> str:
        return f"S3_BUCKET={self.bucket} at " + (
            f"S3_ENDPOINT_URL={self.endpoint}" if self.endpoint else "AWS"
        )


def object_key(prefix: str, job_id: UUID, index: int, attempt: int) -> str:
    return f"{prefix}{job_id}/{index}.{attempt}"


class S3Store:
    name = NAME

    def __init__(self, config: Config) -> None:
        self.config = config
        options: dict[str, Any] = {"region": config.region}
        if config.endpoint is not None:
            options["endpoint"] = config.endpoint
        if config.credentials is not None:
            key_id, secret, token = config.credentials
            options.update(access_key_id=key_id, secret_access_key=secret)
            if token:
                options["session_token"] = token
        client_options: ClientConfig = {
            **CLIENT_OPTIONS,
            "allow_http": bool(config.endpoint and config.endpoint.startswith("http:")),
        }
        self.client = obstore.store.S3Store(
            config.bucket, client_options=client_options, retry_config=RETRIES, **options
        )

    async def put(
        self, *, job_id: UUID, index: int, attempt: int, data: bytes, sha256: str, content_type: str
    ) -> Placement:
        key = object_key(self.config.prefix, job_id, index, attempt)
        await self.put_object(key, data, sha256=sha256, content_type=content_type)
        return Placement(NAME, key, None)

    async def put_object(self, key: str, data: bytes, *, sha256: str, content_type: str) -> None:
        """Write one object with its content type and sha256 (user metadata `sha256`)."""
        try:
            await obstore.put_async(
                self.client,
                key,
                data,
                attributes={"Content-Type": content_type, "sha256": sha256},
                use_multipart=False,
            )
        except BaseError as exc:
            raise StoreUnavailable(f"the bucket did not take {key}: {first_line(exc)}") from None

    async def open(self, image: Image) -> AsyncIterator[bytes]:
        key = self._key(image)
        try:
            found = await obstore.get_async(self.client, key)
        except NotFoundError:
            raise LookupError(f"object {key} is missing from {self.config.where()}") from None
        except BaseError as exc:
            raise StoreUnavailable(f"the bucket did not answer: {first_line(exc)}") from None
        return found.stream(min_chunk_size=64 * 1024)

    async def url(self, image: Image, *, ttl: float) -> str | None:
        try:
            return await obstore.sign_async(self.client, "GET", self._key(image), timedelta(seconds=ttl))
        except BaseError as exc:
            raise StoreUnavailable(f"cannot presign: {first_line(exc)}") from None

    async def delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            try:
                await obstore.delete_async(self.client, list(keys[start : start + DELETE_BATCH]))
            except BaseError as exc:
                raise StoreUnavailable(f"the bucket did not delete: {first_line(exc)}") from None

    async def check(self) -> None:
        try:
            await obstore.list_with_delimiter_async(self.client, self.config.prefix + PROBE)
        except BaseError as exc:
            raise self._classified(exc) from None

    async def create_bucket(self) -> None:
        """Create the bucket (S3_CREATE_BUCKET): a presigned CreateBucket request, since
        obstore itself only reads and writes objects."""
        url = await obstore.sign_async(self.client, "PUT", "", timedelta(minutes=1))
        body = b""
        if self.config.region != "us-east-1":
            body = (
                b'<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                b"<LocationConstraint>" + self.config.region.encode() + b"</LocationConstraint>"
                b"</CreateBucketConfiguration>"
            )

        def create() -> None:
            request = urllib.request.Request(url, data=body, method="PUT")
            try:
                with urllib.request.urlopen(request, timeout=10):
                    pass
            except urllib.error.HTTPError as exc:
                if exc.code != 409:  # BucketAlreadyOwnedByYou: created meanwhile
                    raise StoreMisconfigured(
                        f"cannot create {self.config.where()}: HTTP {exc.code} {exc.reason}"
                    ) from None
            except OSError as exc:
                raise StoreMisconfigured(f"cannot create {self.config.where()}: {exc}") from None

        await asyncio.to_thread(create)

    def _key(self, image: Image) -> str:
        if image.key is None:
            raise LookupError("an s3 image row without a key")
        return image.key

    def _classified(self, exc: BaseError) -> Exception:
        text = str(exc)
        where = self.config.where()
        if "NoSuchBucket" in text:
            return StoreMisconfigured(f"{where}: no such bucket (S3_CREATE_BUCKET=true creates it)")
        if any(
            code in text
            for code in ("403 Forbidden", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")
        ):
            return StoreMisconfigured(
                f"{where}: access refused; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            )
        return StoreUnavailable(f"{where} does not answer: {first_line(exc)}")


def first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def stores_for(settings: Settings) -> Stores:
    """The stores the settings configure: PostgreSQL always, the bucket when S3_BUCKET is
    set; new images go to IMAGE_STORE."""
    config = Config.from_settings(settings)
    found: dict[str, ImageStore] = {stores.POSTGRES: stores.PostgresStore()}
    if config is not None:
        found[NAME] = S3Store(config)
    return Stores(writing=found[settings.image_store], by_name=found)


async def check_at_start(settings: Settings) -> None:
    """What a server or worker checks before it starts: the bucket answers and is there (or
    is created, with S3_CREATE_BUCKET). Raises StoreMisconfigured naming the setting."""
    config = Config.from_settings(settings)
    if config is None:
        return
    store = S3Store(config)
    try:
        await store.check()
    except StoreMisconfigured as exc:
        if not (settings.s3_create_bucket and "no such bucket" in str(exc)):
            raise
        await store.create_bucket()
        await store.check()
    except StoreUnavailable as exc:
        raise StoreMisconfigured(str(exc) + " (S3_ENDPOINT_URL, S3_REGION)") from None


async def delete_orphans(pool: asyncpg.Pool, store: S3Store, *, older_than: float = ORPHAN_AGE) -> int:
    """Delete objects under the prefix that no image row points at and that are older than
    `older_than` seconds (written by a worker that lost its job, or left by a delete that
    failed); return how many. One worker at a time lists the bucket: the sweep holds a
    transaction-level advisory lock (taken without waiting) on a connection of its own,
    and returns 0 at once while another worker holds it."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval(queries.maintenance_try_lock, ORPHAN_LOCK):
            return 0
        return await _delete_orphans(pool, store, older_than=older_than)


async def _delete_orphans(pool: asyncpg.Pool, store: S3Store, *, older_than: float) -> int:
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
    deleted = 0
    try:
        async for chunk in obstore.list(store.client, prefix=store.config.prefix, chunk_size=DELETE_BATCH):
            old = [entry["path"] for entry in chunk if entry["last_modified"] < cutoff]
            if not old:
                continue
            known = await stores.known_keys(pool, old)
            orphans = [key for key in old if key not in known]
            if orphans:
                await store.delete(orphans)
                deleted += len(orphans)
    except BaseError as exc:
        raise StoreUnavailable(f"cannot list the bucket: {first_line(exc)}") from None
    if deleted:
        log.info("deleted %d orphan objects", deleted, extra={"action": "orphans_deleted"})
    return deleted
