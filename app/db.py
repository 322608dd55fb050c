"""Connections: the pool, and the dedicated LISTEN connection that reconnects by itself."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import asyncpg

from app.sql import queries

log = logging.getLogger(__name__)

JOBS_CHANNEL = "menagerie_jobs"
"""NOTIFYed (empty payload) by the AFTER INSERT trigger on jobs."""


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached or dropped the connection."""


UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)
"""Errors that mean PostgreSQL is unreachable or going away, not that a query is wrong."""


async def create_pool(url: str, *, size: int) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        url, min_size=1, max_size=size, command_timeout=30, max_inactive_connection_lifetime=300
    )


async def schema_is_migrated(conn: asyncpg.Connection, *, migration_ids: list[str]) -> bool:
    try:
        applied = await conn.fetchval(queries.schema_applied_count, migration_ids)
    except asyncpg.UndefinedTableError:
        return False
    return applied == len(migration_ids)


class Listener:
    """LISTENs on one channel over its own connection (never a pooled one: the pool runs
    `UNLISTEN *` on release) and keeps doing so across disconnects.

    `on_notify()` runs for every notification; `on_connect()` runs after every (re)connect,
    so the owner can look for work it may have missed while deaf.
    """

    def __init__(
        self,
        url: str,
        *,
        channel: str,
        on_notify: Callable[[], None],
        on_connect: Callable[[], None],
        ping_interval: float = 10.0,
        max_backoff: float = 5.0,
    ) -> None:
        self._url = url
        self._channel = channel
        self._on_notify = on_notify
        self._on_connect = on_connect
        self._ping_interval = ping_interval
        self._max_backoff = max_backoff
        self.connected = asyncio.Event()
        self.reconnects = 0

    def _notified(self, *_: object) -> None:
        self._on_notify()

    async def run(self) -> None:
        """Listen until cancelled."""
        failures = 0
        while True:
            try:
                conn = await asyncpg.connect(self._url, timeout=5)
            except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
                failures += 1
                delay = min(self._max_backoff, 0.1 * 2**failures) * random.uniform(0.5, 1.0)
                log.warning(
                    "listener cannot connect, retrying in %.2fs: %s",
                    delay,
                    exc,
                    extra={"action": "listener_connect_failed"},
                )
                await asyncio.sleep(delay)
                continue
            try:
                await self._listen(conn)
            finally:
                self.connected.clear()
                if not conn.is_closed():
                    conn.terminate()
            failures = 0
            self.reconnects += 1
            log.warning("listener lost its connection", extra={"action": "listener_lost"})

    async def _listen(self, conn: asyncpg.Connection) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(self._channel, self._notified)
        self.connected.set()
        log.info("listening on %s", self._channel, extra={"action": "listener_connected"})
        self._on_connect()
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), self._ping_interval)
            except asyncio.TimeoutError:
                try:
                    await conn.execute(queries.ping, timeout=5)
                except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
                    return
