"""Backpressure for POST /generations: refuse new work (503) while MAX_PENDING_JOBS
generations wait in the queue new ones join (the kind of IMAGE_PROVIDER).

The pending count is read at most once a second per process (counted no further than the
limit, through the claim's index), so refusing work never costs a count(*) per request;
requests that find it stale while it is being read share that one read. Between reads the
server counts the jobs it admits itself, so one server never lets more than the limit wait.
A request that finds the count stale waits for the new read only when the old one would
refuse it (or there is none yet); otherwise it is admitted while the read goes on in the
background: a read of a long queue takes milliseconds, and every POST of that moment waiting
for it was the slowest percent of all POSTs.
Several servers each see the others' jobs only at their next read: together they can
overshoot by what the others admit in a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from app.images import generations


class Full(Exception):
    """The limit is reached: refuse the request."""


class Backlog:
    def __init__(self, limit: int, *, kind: str = generations.KIND, max_age: float = 1.0) -> None:
        self.limit = limit
        self.kind = kind
        """The generation kind new jobs are created as (IMAGE_PROVIDER's): the queue counted."""
        self._max_age = max_age
        self._count = 0
        """Waiting jobs: the last read, plus what this server admitted that the read may not
        have seen (in flight when it began, or admitted since)."""
        self._in_flight = 0
        self._admitted_since_read = 0
        self._read_at = float("-inf")
        self._reading: asyncio.Future[int] | None = None

    async def full(self, pool: asyncpg.Pool) -> bool:
        """Whether the limit is reached (reading the count when it is stale)."""
        if time.monotonic() - self._read_at > self._max_age:
            reading = self._reading
            if reading is None:
                reading = self._reading = asyncio.ensure_future(self._read(pool))
                # Read in the background, its error (the database is down) is nobody's: the
                # next request that needs the count reads it again.
                reading.add_done_callback(lambda done: done.cancelled() or done.exception())
            if self._count >= self.limit or self._read_at == float("-inf"):
                await asyncio.shield(reading)
        return self._count >= self.limit

    @asynccontextmanager
    async def admit(self, pool: asyncpg.Pool) -> AsyncIterator[None]:
        """Hold a place for one new job while it is created; raises Full when there is none.
        A creation that fails gives its place back."""
        if await self.full(pool):
            raise Full
        self._count += 1  # no await since the check: concurrent requests cannot both take it
        self._in_flight += 1
        self._admitted_since_read += 1
        try:
            yield
        except BaseException:
            self._count -= 1
            raise
        finally:
            self._in_flight -= 1

    def give_back(self) -> None:
        """The admitted request created no job after all (an Idempotency-Key replay)."""
        self._count -= 1

    async def _read(self, pool: asyncpg.Pool) -> int:
        carried = self._in_flight
        self._admitted_since_read = 0
        try:
            counted = await generations.pending_count(pool, cap=self.limit, kind=self.kind)
            self._count = counted + carried + self._admitted_since_read
            self._read_at = time.monotonic()
            return self._count
        finally:
            self._reading = None
