"""`menagerie images move-to-s3`: move the bytes of images kept in PostgreSQL rows to the
bucket, in batches, and free the rows' `png`.

Each image is first written as the object `{S3_PREFIX}{job_id}/{index}.0` (attempt 0: moved),
then its row is pointed at it, a batch per statement. Stopped anywhere (Ctrl-C, a crash), a
run leaves every image readable: a row points at its object only once the object is there,
and the next run writes the same key again for the rows not yet moved, so no image is ever
in the bucket twice. An object whose row was deleted meanwhile (retention) is an orphan, which
the orphan sweep deletes.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO
from uuid import UUID

import asyncpg

from app.images import stores
from app.images.s3 import MOVED_ATTEMPT, S3Store, object_key
from app.sql import queries


@dataclass
class Progress:
    """A one-line progress bar on a terminal (rows moved, bytes, rate, ETA); a line per
    report elsewhere."""

    total_rows: int
    total_bytes: int
    out: TextIO = field(default=sys.stderr)
    rows: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, rows: int, size: int) -> None:
        self.rows += rows
        self.bytes += size
        self.show()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.rows / elapsed
        left = max(self.total_rows - self.rows, 0)
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        share = self.rows / self.total_rows if self.total_rows else 1.0
        bar = "#" * int(share * 30)
        return (
            f"[{bar:<30}] {self.rows}/{self.total_rows} images, "
            f"{self.bytes / 1e6:.1f}/{self.total_bytes / 1e6:.1f} MB, "
            f"{rate:.0f} images/s, {self.bytes / 1e6 / elapsed:.1f} MB/s, ETA {eta}"
        )

    def show(self) -> None:
        if self.out.isatty():
            self.out.write("\r" + self.line())
        else:
            self.out.write(self.line() + "\n")
        self.out.flush()

    def done(self) -> None:
        if self.out.isatty():
            self.out.write("\n")
            self.out.flush()


async def move_to_s3(
    pool: asyncpg.Pool,
    bucket: S3Store,
    *,
    batch_size: int = 50,
    concurrency: int = 8,
    pause: float = 0.0,
    progress_to: TextIO | None = sys.stderr,
) -> int:
    """Move every image kept in PostgreSQL to `bucket`, `batch_size` rows per statement with
    up to `concurrency` uploads at once, sleeping `pause` seconds between batches (to leave
    room for live traffic); return how many rows moved."""
    [left] = await pool.fetch(queries.image_left_in, stores.POSTGRES)  # an aggregate: one row
    progress = None
    if progress_to is not None:
        progress = Progress(left["images"], left["bytes"], out=progress_to)
        progress.show()
    moved = 0
    after = (UUID(int=0), -1)
    uploads = asyncio.Semaphore(concurrency)
    try:
        while True:
            rows = await pool.fetch(queries.image_next_in, stores.POSTGRES, *after, batch_size)
            if not rows:
                break
            keys = [
                object_key(bucket.config.prefix, row["job_id"], row["idx"], MOVED_ATTEMPT) for row in rows
            ]

            async def upload(row: asyncpg.Record, key: str) -> None:
                async with uploads:
                    await bucket.put_object(key, row["png"], sha256=row["sha256"], content_type="image/png")

            await asyncio.gather(*(upload(row, key) for row, key in zip(rows, keys, strict=True)))
            count = await pool.fetchval(
                queries.image_moved, [row["job_id"] for row in rows], [row["idx"] for row in rows], keys
            )
            moved += count
            if progress is not None:
                progress.add(count, sum(row["size"] for row in rows))
            after = (rows[-1]["job_id"], rows[-1]["idx"])
            if pause:
                await asyncio.sleep(pause)
    finally:
        if progress is not None:
            progress.done()
    return moved
