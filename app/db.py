"""Connections: the pool, and the dedicated LISTEN connection that reconnects by itself."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from app.sql import queries

log = logging.getLogger(__name__)

JOBS_CHANNEL = "menagerie_jobs"
"""NOTIFYed with a kind when jobs of that kind are enqueued or wait again (retry, hand-back,
reclaim); workers of other kinds ignore it."""
CANCEL_CHANNEL = "menagerie_cancel"
"""NOTIFYed with a job id when a running job is canceled."""
JOB_EVENTS_CHANNEL = "menagerie_job_events"
"""NOTIFYed with the ids (comma separated) of watched jobs that changed (job_events_add)."""


SERVER_APPLICATION = "menagerie-server"
WORKER_APPLICATION = "menagerie-worker"
"""application_name of each process's connections, as pg_stat_activity shows them."""


Connection = asyncpg.Connection | PoolConnectionProxy
"""A connection, held directly or lent by a pool."""

Executor = Connection | asyncpg.Pool
"""Anything that runs a statement: a connection, or a pool that lends one for it."""

UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    # A connection PostgreSQL terminated whose closing asyncpg has not processed yet refuses
    # new operations with this error until it is discarded.
    asyncpg.exceptions.InternalClientError,
)
"""Errors that mean PostgreSQL is unreachable or going away, not that a query is wrong."""

DATABASE_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)
"""Any failure of a statement: PostgreSQL unreachable, or the statement refused."""


class Unavailable(Exception):
    """PostgreSQL cannot be reached now (down, restarting, the connection lost): try later."""


class StatementFailed(Exception):
    """PostgreSQL refused a statement."""


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def translated(function: F) -> F:
    """The database boundary for the API's reads and writes: the driver's errors become
    Unavailable or StatementFailed, so callers above handle the project's own errors."""

    @functools.wraps(function)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await function(*args, **kwargs)
        except UNAVAILABLE_ERRORS as exc:
            raise Unavailable(str(exc) or type(exc).__name__) from exc
        except asyncpg.PostgresError as exc:
            raise StatementFailed(str(exc)) from exc

    return call  # type: ignore[return-value]


T = TypeVar("T")


async def _keep_session(conn: Connection) -> None:
    """Pool connections carry no session state (no SET, LISTEN, advisory lock or cursor;
    every statement commits on its own), so there is nothing to reset on release. The default
    reset costs a round trip per use, and raises from `release` when PostgreSQL has just
    terminated the connection, turning a query that succeeded into an error."""
    if conn.is_in_transaction():
        await conn.execute(queries.rollback)


async def create_pool(
    url: str, *, size: int, application_name: str, durable_commits: bool = True
) -> asyncpg.Pool:
    """A pool that opens connections on demand, so it can be created while PostgreSQL is down;
    connections that die are replaced at their next use; callers get connections in the order
    they asked (FairPool).

    `durable_commits=False` gives the claiming session (CLAIM_SESSION) and keeps idle
    connections open: only for the worker's claims (see Worker._claim_pool)."""
    pool = FairPool(
        url,
        min_size=0,
        max_size=size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300 if durable_commits else 0,
        reset=_keep_session,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        timeout=5,
        command_timeout=30,
        server_settings={
            "application_name": application_name,
            **({} if durable_commits else CLAIM_SESSION),
        },
    )
    await pool
    return pool


class FairPool(asyncpg.Pool):
    """asyncpg's pool, handing out connections first come, first served.

    asyncpg's own pool gives a released connection to whichever task asks for one next: a
    waiting task is woken, but a task that asks in the meantime takes the connection first, and
    the woken one goes back to the end of the line (asyncpg issue #1247). Under load a few
    requests lose their turn again and again: with 64 clients on 10 connections, a bare
    handler answered half its requests within 4 ms and one in a hundred after 90 ms. Here a
    task first waits for its turn in a FIFO semaphore of the pool's size (asyncio's semaphore
    lets no newcomer pass a waiter), so the pool's own line is never longer than its free
    connections: the same handler's 99th percentile fell to 1.5x its median, at the same rate
    (bench/web.py --measure get)."""

    def __init__(self, *args: Any, max_size: int, **kwargs: Any) -> None:
        super().__init__(*args, max_size=max_size, **kwargs)
        self._turns = asyncio.Semaphore(max_size)
        self._holding: set[int] = set()
        """The ids of the connections handed out with a turn, not yet given back."""

    async def _acquire(self, timeout: float | None) -> PoolConnectionProxy:
        # asyncpg's acquire() (`async with` and `await`) and its fetch… methods all come here.
        async with asyncio.timeout(timeout):
            await self._turns.acquire()
            try:
                connection: PoolConnectionProxy = await super()._acquire(None)  # type: ignore[misc]
            except BaseException:
                self._turns.release()
                raise
        self._holding.add(id(connection))
        return connection

    async def release(self, connection: PoolConnectionProxy, *, timeout: float | None = None) -> None:
        try:
            await super().release(connection, timeout=timeout)
        finally:
            if id(connection) in self._holding:  # once per connection handed out
                self._holding.remove(id(connection))
                self._turns.release()


CLAIM_SESSION = {"synchronous_commit": "off", "enable_seqscan": "off"}
"""The claiming connection's session: commits that do not wait for the WAL flush (see
Worker._claim_pool), and no sequential scans. The claim finds due jobs through job_queue's
index and the rows it claims through the primary key; on a partition the planner thinks small
(just truncated, not yet analyzed) it would read the whole partition instead, a cost that grows
with the backlog and that nothing on this connection ever needs."""


def backoff(attempt: int, *, base: float, cap: float) -> float:
    """Seconds to wait after failure number `attempt` (1-based): `base` doubled per failure up
    to `cap`, then scaled by a random half to whole, so that clients failing together do not
    return together."""
    return random.uniform(0.5, 1.0) * min(cap, base * 2.0 ** (attempt - 1))


RETRIED: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, Unavailable)


async def with_retries(operation: Callable[[], Awaitable[T]], *, deadline: float) -> T:
    """Run `operation`, retrying with backoff and jitter while PostgreSQL is unavailable, for
    up to `deadline` seconds; then the last error propagates."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    failures = 0
    while True:
        try:
            return await operation()
        except RETRIED:
            failures += 1
            delay = backoff(failures, base=0.1, cap=2.0)
            if loop.time() + delay > give_up:
                raise
            await asyncio.sleep(delay)


@asynccontextmanager
async def transaction(conn: Connection) -> AsyncIterator[None]:
    """`conn.transaction()`, except that when PostgreSQL drops the connection mid-way, the
    error that dropped it propagates (asyncpg's own would replace it with an InterfaceError
    from trying to roll back on a closed connection, which reads as a bug, not an outage)."""
    tx = conn.transaction()
    await tx.start()
    try:
        yield
    except BaseException:
        if not conn.is_closed():
            await tx.rollback()
        raise
    await tx.commit()


@translated
async def schema_is_migrated(pool: asyncpg.Pool, *, migration_ids: list[str]) -> bool:
    """Whether every migration has been applied (False on a database without yoyo's table)."""
    async with pool.acquire(timeout=2) as conn:
        try:
            applied: int = await conn.fetchval(queries.schema_applied_count, migration_ids)
        except asyncpg.UndefinedTableError:
            return False
    return applied == len(migration_ids)


class Listener:
    """LISTENs on some channels over its own connection (never a pooled one: LISTEN is session
    state, and the pool may close or replace an idle connection) and keeps doing so across
    disconnects.

    `channels` maps each channel to a callback taking the payload. `on_connect()` runs after
    every (re)connect, so the owner can look for work it may have missed while deaf. A
    termination callback notices a dropped connection within milliseconds; a periodic ping
    notices one that hangs.
    """

    def __init__(
        self,
        url: str,
        *,
        channels: Mapping[str, Callable[[str], None]],
        on_connect: Callable[[], None],
        application_name: str,
        ping_interval: float = 5.0,
        max_backoff: float = 5.0,
    ) -> None:
        self._url = url
        self._channels = dict(channels)
        self._on_connect = on_connect
        self._application_name = application_name
        self._ping_interval = ping_interval
        self._max_backoff = max_backoff
        self.connected = asyncio.Event()
        self.reconnects = 0

    async def run(self) -> None:
        """Listen until cancelled."""
        failures = 0
        while True:
            try:
                conn = await asyncpg.connect(
                    self._url, timeout=5, server_settings={"application_name": self._application_name}
                )
            except DATABASE_ERRORS as exc:
                failures += 1
                delay = backoff(failures, base=0.2, cap=self._max_backoff)
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
            except DATABASE_ERRORS as exc:
                log.warning("listener failed: %s", exc, extra={"action": "listener_failed"})
            except Exception:
                # Never let the listener die: the owner would stop hearing work and cancels.
                log.exception("listener crashed", extra={"action": "listener_failed"})
                await asyncio.sleep(self._max_backoff * random.uniform(0.5, 1.0))
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
        for channel, callback in self._channels.items():
            await conn.add_listener(channel, _payload_only(callback))
        self.connected.set()
        log.info("listening", extra={"action": "listener_connected"})
        self._on_connect()
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), self._ping_interval)
            except TimeoutError:
                await conn.execute(queries.ping, timeout=5)


def _payload_only(callback: Callable[[str], None]) -> Callable[..., None]:
    def on_notification(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        callback(payload)

    return on_notification
