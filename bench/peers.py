"""Peer benchmark: PGQueuer and procrastinate on the same no-op workload.

Measures (see ``bench/README-peers.md`` for the exact definitions):

* ``pickup-idle``  - one job every 200 ms, pickup latency p50/p99.
* ``pickup-300``   - steady 300 jobs/s, pickup latency p50/p99.
* ``drain``        - N pending jobs, drained by 1 and then 2 worker processes.
* ``enqueue-rate`` - 32 concurrent producers, one job per transaction.

Every measure (and, for ``drain``, every phase) runs in a freshly created
database ``bench_<peer>_<random>`` which is dropped afterwards.  Workers are
always real subprocesses (``python bench/peers.py --worker ...``) that talk to
the parent over stdin/stdout with one JSON object per line.

Usage::

    python bench/peers.py --peer pgqueuer --measure pickup-idle [--quick] [--runs 3]

Prints one JSON line with the figures.  Needs ``asyncpg``, ``uvloop`` and the
peer under test (``pgqueuer`` and/or ``procrastinate[psycopg]``) importable.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import secrets
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

try:  # uvloop is used by both peers' own tooling; fall back to asyncio if missing.
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

DEFAULT_DSN_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
MEASURES = ("pickup-idle", "pickup-300", "drain", "enqueue-rate")
PEERS = ("menagerie", "pgqueuer", "procrastinate", "bare")

# Workload sizes: (full, quick).
IDLE_JOBS = (100, 20)
IDLE_INTERVAL_S = 0.200
RATE_JOBS_PER_S = 300
RATE_DURATION_S = (10.0, 3.0)
DRAIN_JOBS = (20_000, 2_000)
ENQUEUE_PRODUCERS = 32
ENQUEUE_DURATION_S = (5.0, 2.0)

# Seconds to wait for workers before declaring a run broken.
WORKER_READY_TIMEOUT_S = 30.0
PICKUP_GRACE_S = 30.0
DRAIN_POLL_INTERVAL_S = 0.05
DRAIN_TIMEOUT_S = 600.0


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Percentile with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def dsn_for_database(dsn: str, database: str) -> str:
    """Return ``dsn`` with its path (database name) replaced."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


@contextlib.asynccontextmanager
async def fresh_database(dsn_admin: str, peer: str) -> AsyncIterator[str]:
    """Create ``bench_<peer>_<random>``, yield its DSN, drop it afterwards."""
    name = f"bench_{peer}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(dsn_admin)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield dsn_for_database(dsn_admin, name)
    finally:
        admin = await asyncpg.connect(dsn_admin)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def connected(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection, closed on exit (used for polling the queue)."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


def job_payload(seq: int | None = None, *, warm: bool = False) -> dict[str, Any]:
    """The job body every peer carries: a sequence number and the wall clock at call time."""
    if warm:
        return {"warm": True}
    return {"seq": seq, "t_call": time.time()}


def run_async(coro: Awaitable[Any]) -> Any:
    """Run ``coro`` on uvloop when available (both peers support it)."""
    if uvloop is not None:
        return uvloop.run(coro)
    return asyncio.run(coro)  # pragma: no cover


# --------------------------------------------------------------------------
# Worker-side probe: what the no-op handler records
# --------------------------------------------------------------------------


@dataclass
class Probe:
    """Records, in the worker process, when each job's handler started.

    ``mode="latency"`` keeps ``(seq, t_started)`` pairs; ``mode="count"`` only
    counts (used by ``drain`` so the handler stays as close to a no-op as possible).
    """

    mode: str
    count: int = 0
    starts: list[tuple[int, float]] = field(default_factory=list)

    def record(self, t_started: float, payload: bytes | dict[str, Any] | None) -> None:
        """Called on the handler's first line with ``time.time()`` and the raw payload."""
        if self.mode == "count":
            self.count += 1
            return
        body = json.loads(payload) if isinstance(payload, (bytes, str)) else (payload or {})
        if body.get("warm"):
            emit({"event": "warm"})
            return
        self.count += 1
        self.starts.append((body["seq"], t_started))


PROBE = Probe(mode="count")


def emit(message: dict[str, Any]) -> None:
    """Worker -> parent message: one JSON object per stdout line."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------
# Peer adapters: the only code that knows each library's API
# --------------------------------------------------------------------------


class Producer(abc.ABC):
    """Client-side enqueue API of a peer."""

    @abc.abstractmethod
    async def enqueue(self, payload: dict[str, Any]) -> Any:
        """Enqueue one job in its own transaction (the peer's normal single-job call).

        May return the key the worker's probe will report for this job (menagerie jobs
        carry no payload, so its probe reports the job id); None means ``payload["seq"]``.
        """

    @abc.abstractmethod
    async def enqueue_many(self, payloads: list[dict[str, Any]]) -> None:
        """Enqueue many jobs with the peer's bulk API."""


class Peer(abc.ABC):
    """What the generic measures need from a job-queue library."""

    name: str
    #: Importable module of the library (imported by workers before ``ready``).
    module: str
    #: Default settings (documented in the README); ``self.settings`` is the
    #: per-instance copy after overrides, reported with every result.
    defaults: ClassVar[dict[str, Any]]
    #: Jobs per bulk-enqueue call while filling the drain backlog.
    bulk_chunk: int

    def __init__(self, overrides: dict[str, str] | None = None) -> None:
        """Copy the class defaults and apply ``--set KEY=VALUE`` overrides (typed like the default)."""
        self.overrides = dict(overrides or {})
        self.settings: dict[str, Any] = dict(self.defaults)
        for key, raw in (overrides or {}).items():
            if key not in self.settings:
                raise KeyError(f"{self.name} has no setting {key!r}; known: {sorted(self.settings)}")
            default = self.settings[key]
            if isinstance(default, bool):
                self.settings[key] = raw.lower() in ("1", "true", "yes")
            elif isinstance(default, (int, float)):
                self.settings[key] = type(default)(raw)
            elif raw.lower() == "none":
                self.settings[key] = None
            else:  # str settings, or an int for a setting that defaults to None
                self.settings[key] = int(raw) if default is None and raw.isdigit() else raw

    @abc.abstractmethod
    async def install(self, dsn: str) -> None:
        """Install the peer's schema into an empty database."""

    @abc.abstractmethod
    def producer(self, dsn: str, pool_size: int) -> contextlib.AbstractAsyncContextManager[Producer]:
        """Open a producer backed by ``pool_size`` connections."""

    @abc.abstractmethod
    async def serve(self, dsn: str, stop: asyncio.Event) -> None:
        """Worker process body: run the peer's worker with a no-op handler until ``stop``.

        The handler's first line must be ``PROBE.record(time.time(), payload)``.
        """

    @abc.abstractmethod
    async def remaining(self, conn: asyncpg.Connection) -> int:
        """Jobs not yet completed (queued or running)."""

    async def db_clock_pickups_ms(self, conn: asyncpg.Connection) -> list[float] | None:
        """Pickup latencies by the database clock (claim minus insert), where the peer
        records both; None otherwise."""
        return None

    async def failed(self, conn: asyncpg.Connection) -> int | None:
        """Jobs that ended failed, where the peer keeps them; None when it does not tell."""
        return None

    def version(self) -> str:
        from importlib.metadata import version

        return version(self.name)


class PgQueuerPeer(Peer):
    """PGQueuer 1.x: asyncpg pool driver, LISTEN/NOTIFY, batched dequeue."""

    name = module = "pgqueuer"
    entrypoint = "noop"
    bulk_chunk = 5_000
    defaults: ClassVar[dict[str, Any]] = {
        "driver": "asyncpg pool (AsyncpgPoolDriver), worker pool min=2 max=10",
        "batch_size": 100,
        "max_concurrent_tasks": None,
        "dequeue_timeout_s": 30,
        "durability": "durable (default)",
        "autovacuum": "pgq autovac settings applied (Queries.optimize_autovacuum)",
        "event_loop": "uvloop",
    }

    async def install(self, dsn: str) -> None:
        from pgqueuer import Queries

        conn = await asyncpg.connect(dsn)
        try:
            queries = Queries.from_asyncpg_connection(conn)
            await queries.install()  # == `pgq install`
            await queries.optimize_autovacuum()  # == `pgq autovac`
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def producer(self, dsn: str, pool_size: int) -> AsyncIterator[Producer]:
        from pgqueuer import Queries

        entrypoint = self.entrypoint

        class _Producer(Producer):
            def __init__(self, queries: Queries) -> None:
                self.queries = queries

            async def enqueue(self, payload: dict[str, Any]) -> None:
                await self.queries.enqueue(entrypoint, json.dumps(payload).encode())

            async def enqueue_many(self, payloads: list[dict[str, Any]]) -> None:
                await self.queries.enqueue(
                    [entrypoint] * len(payloads),
                    [json.dumps(p).encode() for p in payloads],
                    [0] * len(payloads),
                )

        async with asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size) as pool:
            yield _Producer(Queries.from_asyncpg_pool(pool))

    async def serve(self, dsn: str, stop: asyncio.Event) -> None:
        from pgqueuer import Job, PgQueuer

        logging.getLogger("pgqueuer").setLevel(logging.WARNING)
        async with asyncpg.create_pool(dsn, min_size=2, max_size=10) as pool:
            pgq = PgQueuer.from_asyncpg_pool(pool)

            @pgq.entrypoint(self.entrypoint)
            async def noop(job: Job) -> None:
                PROBE.record(time.time(), job.payload)

            run = asyncio.create_task(
                pgq.run(
                    batch_size=self.settings["batch_size"],
                    max_concurrent_tasks=self.settings["max_concurrent_tasks"],
                    dequeue_timeout=timedelta(seconds=self.settings["dequeue_timeout_s"]),
                )
            )
            await stop.wait()
            pgq.shutdown.set()
            await run

    async def remaining(self, conn: asyncpg.Connection) -> int:
        # Completed jobs are deleted from the queue table (moved to pgqueuer_log).
        return await conn.fetchval("SELECT count(*) FROM pgqueuer")


class ProcrastinatePeer(Peer):
    """procrastinate 3.x: psycopg 3 async pool, LISTEN/NOTIFY, one job per fetch."""

    name = module = "procrastinate"
    task_name = "bench.noop"
    bulk_chunk = 1_000
    defaults: ClassVar[dict[str, Any]] = {
        "connector": "PsycopgConnector (psycopg_pool), worker pool max = concurrency + 2",
        "concurrency": 10,
        "listen_notify": True,
        "fetch_job_polling_interval_s": 5.0,
        "delete_jobs": "always",
        "event_loop": "uvloop",
    }

    def _app(self, dsn: str, pool_size: int) -> Any:
        import procrastinate

        # Tasks carry an explicit name, so "App instantiated in __main__" is harmless here.
        logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)
        app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=dsn, min_size=pool_size, max_size=pool_size)
        )

        @app.task(name=self.task_name)
        async def noop(seq: int | None = None, t_call: float | None = None, warm: bool = False) -> None:
            PROBE.record(time.time(), {"seq": seq, "t_call": t_call, "warm": warm})

        self.task = noop
        return app

    async def install(self, dsn: str) -> None:
        app = self._app(dsn, pool_size=1)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()  # == `procrastinate schema --apply`

    @contextlib.asynccontextmanager
    async def producer(self, dsn: str, pool_size: int) -> AsyncIterator[Producer]:
        app = self._app(dsn, pool_size)
        task = self.task

        class _Producer(Producer):
            async def enqueue(self, payload: dict[str, Any]) -> None:
                await task.defer_async(**payload)

            async def enqueue_many(self, payloads: list[dict[str, Any]]) -> None:
                await task.batch_defer_async(*payloads)

        async with app.open_async():  # opens (and waits for) all pool connections
            yield _Producer()

    async def serve(self, dsn: str, stop: asyncio.Event) -> None:
        concurrency = self.settings["concurrency"]
        app = self._app(dsn, pool_size=concurrency + 2)
        async with app.open_async():
            run = asyncio.create_task(
                app.run_worker_async(
                    concurrency=concurrency,
                    listen_notify=self.settings["listen_notify"],
                    fetch_job_polling_interval=self.settings["fetch_job_polling_interval_s"],
                    delete_jobs=self.settings["delete_jobs"],
                    install_signal_handlers=False,
                    wait=True,
                )
            )
            await stop.wait()
            run.cancel()  # procrastinate: cancelling run_worker_async = graceful stop
            with contextlib.suppress(asyncio.CancelledError):
                await run

    async def remaining(self, conn: asyncpg.Connection) -> int:
        return await conn.fetchval(
            "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
        )


class MenageriePeer(Peer):
    """menagerie itself: its worker loop and maintenance loop, as a worker process runs them,
    with a no-op handler for a kind of its own, in a real process."""

    name = "menagerie"
    module = "app.queue.worker"
    kind = "bench"
    bulk_chunk = 5_000
    defaults: ClassVar[dict[str, Any]] = {
        "slots": 200,
        "pool_size": 10,
        "handler": "plain",
        "watched": False,
        "event_loop": "uvloop",
        "logging": "WARNING (one line per job at INFO otherwise)",
    }
    """`handler`: plain (a function, called inline by the worker loop) or async (an async def,
    a task per job). `watched`: record each job's changes in job_events, as generations do."""

    async def install(self, dsn: str) -> None:
        from app import migrate

        await asyncio.to_thread(migrate.apply, dsn)

    @contextlib.asynccontextmanager
    async def producer(self, dsn: str, pool_size: int) -> AsyncIterator[Producer]:
        from app import queue

        kind, watched = self.kind, self.settings["watched"]

        class _Producer(Producer):
            def __init__(self, pool: asyncpg.Pool) -> None:
                self.pool = pool

            async def enqueue(self, payload: dict[str, Any]) -> None:
                await queue.enqueue(self.pool, [queue.NewJob(kind, args=payload, watched=watched)])

            async def enqueue_many(self, payloads: list[dict[str, Any]]) -> None:
                await queue.enqueue(
                    self.pool, [queue.NewJob(kind, args=p, watched=watched) for p in payloads]
                )

        async with asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size) as pool:
            yield _Producer(pool)

    async def serve(self, dsn: str, stop: asyncio.Event) -> None:
        from app import db
        from app.queue.kinds import Kind
        from app.queue.maintenance import Maintenance, queue_rounds
        from app.queue.worker import Timing, Worker

        logging.getLogger().setLevel(logging.WARNING)

        # The raw JSON, as PGQueuer's handler gets its payload's bytes (the probe decodes it
        # only when it measures latency).
        def noop(job: Any) -> None:
            PROBE.record(time.time(), job.args_json)

        async def async_noop(job: Any) -> None:
            PROBE.record(time.time(), job.args_json)

        handler = {"plain": noop, "async": async_noop}[self.settings["handler"]]
        pool = await db.create_pool(
            dsn, size=self.settings["pool_size"], application_name=db.WORKER_APPLICATION
        )
        worker = Worker(
            pool=pool,
            listen_url=dsn,
            kinds=[Kind(self.kind, handler, slots=self.settings["slots"])],
            timing=Timing(poll_interval=30, lease_seconds=30, shutdown_grace=25),
        )
        maintenance = Maintenance(
            queue_rounds(
                pool, lease_seconds=30, retention_days=0, retention_batch=500, forget={self.kind: None}
            )
        )
        maintaining = asyncio.create_task(maintenance.run())
        run = asyncio.create_task(worker.run())
        await stop.wait()
        worker.stop()
        await run
        maintaining.cancel()
        await asyncio.gather(maintaining, return_exceptions=True)
        await pool.close()

    async def remaining(self, conn: asyncpg.Connection) -> int:
        return await conn.fetchval("SELECT count(*) FROM job_queue")

    async def db_clock_pickups_ms(self, conn: asyncpg.Connection) -> list[float] | None:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM started_at - created_at) * 1000 AS ms FROM finished_jobs "
            "WHERE NOT (args ? 'warm') AND started_at IS NOT NULL"
        )
        return [float(row["ms"]) for row in rows]

    async def failed(self, conn: asyncpg.Connection) -> int | None:
        return await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'failed'")

    def version(self) -> str:
        from importlib.metadata import version

        return version("menagerie")


class BarePeer(Peer):
    """No library: about the least a LISTEN/NOTIFY + SKIP LOCKED queue can cost here. A
    two-column table with a statement trigger that NOTIFYs; a worker that claims up to
    ``batch_size`` rows in one UPDATE, runs them inline and deletes them in one DELETE, on a
    connection that commits without waiting for the WAL flush. No
    leases, retries, history, events or concurrency: a ceiling to read the queues against,
    not a queue to use."""

    name = "bare"
    module = "asyncpg"
    bulk_chunk = 5_000
    defaults: ClassVar[dict[str, Any]] = {"batch_size": 100, "event_loop": "uvloop"}
    schema = """
        CREATE TABLE bare_jobs (
            id      bigserial PRIMARY KEY,
            payload jsonb NOT NULL,
            claimed boolean NOT NULL DEFAULT false
        );
        CREATE INDEX bare_jobs_queued ON bare_jobs (id) WHERE NOT claimed;
        CREATE FUNCTION bare_wake() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('bare_jobs', ''); RETURN NULL; END $$;
        CREATE TRIGGER bare_wake AFTER INSERT ON bare_jobs
            FOR EACH STATEMENT EXECUTE FUNCTION bare_wake();
    """
    claim = """
        UPDATE bare_jobs SET claimed = true
        WHERE id IN (SELECT id FROM bare_jobs WHERE NOT claimed ORDER BY id LIMIT $1
                     FOR UPDATE SKIP LOCKED)
        RETURNING id, payload
    """
    delete = "DELETE FROM bare_jobs WHERE id = ANY($1::bigint[])"

    async def install(self, dsn: str) -> None:
        async with connected(dsn) as conn:
            await conn.execute(self.schema)

    @contextlib.asynccontextmanager
    async def producer(self, dsn: str, pool_size: int) -> AsyncIterator[Producer]:
        class _Producer(Producer):
            def __init__(self, pool: asyncpg.Pool) -> None:
                self.pool = pool

            async def enqueue(self, payload: dict[str, Any]) -> None:
                await self.pool.execute("INSERT INTO bare_jobs (payload) VALUES ($1)", json.dumps(payload))

            async def enqueue_many(self, payloads: list[dict[str, Any]]) -> None:
                await self.pool.execute(
                    "INSERT INTO bare_jobs (payload) SELECT unnest($1::jsonb[])",
                    [json.dumps(p) for p in payloads],
                )

        async with asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size) as pool:
            yield _Producer(pool)

    async def serve(self, dsn: str, stop: asyncio.Event) -> None:
        wake = asyncio.Event()
        async with connected(dsn) as listening, connected(dsn) as conn:
            # Commits without waiting for the WAL flush, as menagerie's claims do: a ceiling.
            await conn.execute("SET synchronous_commit = off")
            await listening.add_listener("bare_jobs", lambda *_: wake.set())
            stopping = asyncio.ensure_future(stop.wait())
            while not stop.is_set():
                wake.clear()
                rows = await conn.fetch(self.claim, self.settings["batch_size"])
                if not rows:
                    woken = asyncio.ensure_future(wake.wait())
                    await asyncio.wait([woken, stopping], return_when=asyncio.FIRST_COMPLETED)
                    woken.cancel()
                    continue
                for row in rows:
                    PROBE.record(time.time(), row["payload"])
                await conn.execute(self.delete, [row["id"] for row in rows])
            stopping.cancel()

    async def remaining(self, conn: asyncpg.Connection) -> int:
        return await conn.fetchval("SELECT count(*) FROM bare_jobs")

    async def failed(self, conn: asyncpg.Connection) -> int | None:
        return 0  # no failure path: a claimed row is handled inline, then deleted

    def version(self) -> str:
        return "asyncpg " + asyncpg.__version__


def get_peer(name: str, overrides: dict[str, str] | None = None) -> Peer:
    peers = {
        "menagerie": MenageriePeer,
        "pgqueuer": PgQueuerPeer,
        "procrastinate": ProcrastinatePeer,
        "bare": BarePeer,
    }
    return peers[name](overrides)


# --------------------------------------------------------------------------
# Worker subprocess: protocol and parent-side handle
# --------------------------------------------------------------------------


async def worker_main(peer: Peer, dsn: str, probe_mode: str) -> None:
    """Entry point of ``peers.py --worker``.

    Protocol (stdout, one JSON per line): ``ready`` once the peer library is
    imported and the event loop is up; the parent then writes ``go`` on stdin and
    the worker connects and starts the peer's run loop; ``warm`` for each warm-up
    job seen; on ``stop`` (or stdin EOF) the worker stops the peer gracefully and
    emits ``result``.
    """
    PROBE.mode = probe_mode
    importlib.import_module(peer.module)  # keep import time out of measured windows
    loop = asyncio.get_running_loop()
    go, stop = asyncio.Event(), asyncio.Event()

    async def read_commands() -> None:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            cmd = line.strip()
            if cmd == "go":
                go.set()
            elif cmd == "stop" or not line:
                go.set()
                stop.set()
                return

    reader = asyncio.create_task(read_commands())
    emit({"event": "ready"})
    await go.wait()
    await peer.serve(dsn, stop)
    emit(
        {
            "event": "result",
            "count": PROBE.count,
            "starts": PROBE.starts,
            "cpu_s": time.process_time(),  # whole worker process, incl. imports
        }
    )
    await reader


class WorkerHandle:
    """Parent-side handle of one worker subprocess."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls, peer: Peer, dsn: str, probe_mode: str) -> WorkerHandle:
        settings = [arg for k, v in peer.overrides.items() for arg in ("--set", f"{k}={v}")]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            "--peer",
            peer.name,
            "--dsn",
            dsn,
            "--probe",
            probe_mode,
            *settings,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,  # the latency result line can be large
        )
        return cls(proc)

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """Wait for the next message ``event`` (other messages are skipped)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), max(0.0, deadline - time.monotonic()))
            if not line:
                raise RuntimeError(f"worker exited (rc={await self.proc.wait()}) before {event!r}")
            with contextlib.suppress(json.JSONDecodeError):
                message = json.loads(line)
                if message.get("event") == event:
                    return message

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((command + "\n").encode())

    async def stop(self) -> dict[str, Any]:
        """Ask for a graceful stop and return the worker's ``result`` message."""
        self.send("stop")
        result = await self.expect("result", timeout=60.0)
        await asyncio.wait_for(self.proc.wait(), 30.0)
        return result

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@contextlib.asynccontextmanager
async def running_workers(peer: Peer, dsn: str, n: int, probe_mode: str) -> AsyncIterator[list[WorkerHandle]]:
    """Spawn ``n`` workers, wait until all are ready, yield them (not yet started)."""
    workers = [await WorkerHandle.spawn(peer, dsn, probe_mode) for _ in range(n)]
    try:
        await asyncio.gather(*(w.expect("ready", WORKER_READY_TIMEOUT_S) for w in workers))
        yield workers
    finally:
        for w in workers:
            w.kill()
        await asyncio.gather(*(w.proc.wait() for w in workers))


# --------------------------------------------------------------------------
# Generic measures
# --------------------------------------------------------------------------


@dataclass
class Submissions:
    """What the paced producer observed, per job ``seq``."""

    called: dict[int, float] = field(default_factory=dict)  # time.time() before the call
    enqueued: dict[int, float] = field(default_factory=dict)  # time.time() after it returned
    rate_per_s: float = float("nan")  # achieved submission rate


async def paced_enqueue(producer: Producer, n: int, interval_s: float) -> Submissions:
    """Open-loop producer: job ``i`` is submitted at ``t0 + i * interval_s``.

    Each enqueue runs as its own task, so a slow commit does not delay the next
    submission.  ``enqueued[seq]`` is ``time.time()`` right after the enqueue
    call (i.e. its commit) returned; ``called[seq]`` is the ``t_call`` carried
    in the payload.
    """
    out = Submissions()

    async def one(seq: int) -> None:
        payload = job_payload(seq)
        key = await producer.enqueue(payload)
        key = seq if key is None else key
        out.enqueued[key] = time.time()
        out.called[key] = payload["t_call"]

    t0 = time.perf_counter()
    tasks = []
    for seq in range(n):
        delay = t0 + seq * interval_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(seq)))
    span = time.perf_counter() - t0
    await asyncio.gather(*tasks)
    if n > 1 and span > 0:
        out.rate_per_s = (n - 1) / span
    return out


async def pickup_latency(peer: Peer, dsn: str, n: int, interval_s: float) -> dict[str, Any]:
    """One worker process; ``n`` jobs at ``1/interval_s`` jobs/s; latency percentiles."""
    async with (
        peer.producer(dsn, pool_size=8) as producer,
        running_workers(peer, dsn, 1, probe_mode="latency") as (worker,),
    ):
        worker.send("go")
        # Warm-up job: proves the worker is listening before the clock starts.
        await producer.enqueue(job_payload(warm=True))
        await worker.expect("warm", WORKER_READY_TIMEOUT_S)

        sub = await paced_enqueue(producer, n, interval_s)
        # Wait until the worker has seen every job (bounded), then collect.
        deadline = time.monotonic() + PICKUP_GRACE_S
        async with connected(dsn) as conn:
            while await peer.remaining(conn) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        result = await worker.stop()
        async with connected(dsn) as conn:
            db_clock = await peer.db_clock_pickups_ms(conn)

    starts = [(seq, t) for seq, t in result["starts"] if seq in sub.enqueued]
    latencies = [(t - sub.enqueued[seq]) * 1000 for seq, t in starts]
    # Upper bound: from just before the enqueue call (includes the enqueue round trip).
    from_call = [(t - sub.called[seq]) * 1000 for seq, t in starts]
    return {
        "jobs": n,
        "picked_up": len(latencies),
        "offered_rate_per_s": round(1 / interval_s, 1),
        "achieved_rate_per_s": round(sub.rate_per_s, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2) if latencies else None,
        "negative_count": sum(1 for x in latencies if x < 0),
        "from_call_p50_ms": round(percentile(from_call, 50), 2),
        "from_call_p99_ms": round(percentile(from_call, 99), 2),
        **(
            {
                "db_clock_p50_ms": round(percentile(db_clock, 50), 2),
                "db_clock_p99_ms": round(percentile(db_clock, 99), 2),
            }
            if db_clock
            else {}
        ),
    }


async def drain_once(peer: Peer, dsn_admin: str, jobs: int, workers: int) -> dict[str, Any]:
    """Fill ``jobs`` pending jobs, then time ``workers`` processes emptying the queue."""
    async with fresh_database(dsn_admin, peer.name) as dsn:
        await peer.install(dsn)
        t_fill = time.perf_counter()
        async with peer.producer(dsn, pool_size=1) as producer:
            for start in range(0, jobs, peer.bulk_chunk):
                chunk = min(peer.bulk_chunk, jobs - start)
                await producer.enqueue_many([job_payload(start + i) for i in range(chunk)])
        fill_s = time.perf_counter() - t_fill

        async with (
            connected(dsn) as conn,
            running_workers(peer, dsn, workers, probe_mode="count") as handles,
        ):
            assert await peer.remaining(conn) == jobs
            t0 = time.perf_counter()
            for h in handles:
                h.send("go")
            while await peer.remaining(conn):
                if time.perf_counter() - t0 > DRAIN_TIMEOUT_S:
                    raise TimeoutError("drain did not finish")
                await asyncio.sleep(DRAIN_POLL_INTERVAL_S)
            elapsed = time.perf_counter() - t0
            results = [await h.stop() for h in handles]
            failed = await peer.failed(conn)

    return {
        "jobs": jobs,
        "workers": workers,
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(jobs / elapsed, 1),
        "handled": sum(r["count"] for r in results),
        "failed": failed,
        "per_worker": [r["count"] for r in results],
        "worker_cpu_s": [round(r["cpu_s"], 2) for r in results],
        "worker_cpu_s_total": round(sum(r["cpu_s"] for r in results), 3),
        "bulk_fill_jobs_per_s": round(jobs / fill_s, 1),
    }


async def enqueue_rate(peer: Peer, dsn: str, producers: int, duration_s: float) -> dict[str, Any]:
    """``producers`` concurrent loops, one single-job enqueue call per transaction."""
    counts = [0] * producers
    async with peer.producer(dsn, pool_size=producers) as producer:
        deadline = time.perf_counter() + duration_s

        async def loop(i: int) -> None:
            seq = i * 10_000_000
            while time.perf_counter() < deadline:
                await producer.enqueue(job_payload(seq))
                counts[i] += 1
                seq += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(loop(i) for i in range(producers)))
        elapsed = time.perf_counter() - t0
    total = sum(counts)
    return {
        "producers": producers,
        "seconds": round(elapsed, 3),
        "jobs": total,
        "jobs_per_s": round(total / elapsed, 1),
    }


async def measure(
    peer: str,
    measure: str,
    *,
    quick: bool,
    dsn_admin: str = DEFAULT_DSN_ADMIN,
    overrides: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run one measure for one peer in fresh database(s); return its figures.

    ``overrides`` replaces entries of the peer's ``settings`` (CLI: ``--set KEY=VALUE``).
    """
    p = get_peer(peer, overrides)
    size = 1 if quick else 0  # index into the (full, quick) tuples

    async def in_fresh_db(fn: Callable[[str], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        async with fresh_database(dsn_admin, p.name) as dsn:
            await p.install(dsn)
            return await fn(dsn)

    if measure == "pickup-idle":
        figures = await in_fresh_db(lambda dsn: pickup_latency(p, dsn, IDLE_JOBS[size], IDLE_INTERVAL_S))
    elif measure == "pickup-300":
        n = int(RATE_JOBS_PER_S * RATE_DURATION_S[size])
        figures = await in_fresh_db(lambda dsn: pickup_latency(p, dsn, n, 1 / RATE_JOBS_PER_S))
    elif measure == "drain":
        figures = {f"workers_{w}": await drain_once(p, dsn_admin, DRAIN_JOBS[size], w) for w in (1, 2)}
    elif measure == "enqueue-rate":
        figures = await in_fresh_db(
            lambda dsn: enqueue_rate(p, dsn, ENQUEUE_PRODUCERS, ENQUEUE_DURATION_S[size])
        )
    else:
        raise ValueError(f"unknown measure {measure!r}")
    return {
        "peer": p.name,
        "version": p.version(),
        "measure": measure,
        "quick": quick,
        "settings": p.settings,
        "figures": figures,
    }


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def median_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric leaf across runs (nested dicts are walked).

    Non-numeric values (lists such as ``per_worker``, strings) are taken from the
    first run; the individual runs are reported alongside.
    """
    first = runs[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, dict):
            out[key] = median_figures([r[key] for r in runs])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = round(statistics.median(r[key] for r in runs if r[key] is not None), 2)
        else:
            out[key] = value
    return out


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}``."""
    return dict(item.split("=", 1) for item in items)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    runs = [
        await measure(
            args.peer,
            args.measure,
            quick=args.quick,
            dsn_admin=args.dsn_admin,
            overrides=parse_overrides(args.set),
        )
        for _ in range(args.runs)
    ]
    result = dict(runs[0])
    if args.runs > 1:
        result["runs"] = [r["figures"] for r in runs]
        result["figures"] = median_figures(result["runs"])
        result["aggregate"] = f"median of {args.runs} runs"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", choices=PEERS, required=True)
    parser.add_argument("--measure", choices=MEASURES)
    parser.add_argument("--quick", action="store_true", help="smaller workload")
    parser.add_argument("--runs", type=int, default=1, help="repeat and report medians")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a peer setting, e.g. --set batch_size=100 (repeatable)",
    )
    parser.add_argument("--dsn-admin", default=os.environ.get("BENCH_DSN_ADMIN", DEFAULT_DSN_ADMIN))
    # Internal: worker subprocess mode.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--probe", choices=("latency", "count"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        peer = get_peer(args.peer, parse_overrides(args.set))
        run_async(worker_main(peer, args.dsn, args.probe))
        return
    if not args.measure:
        parser.error("--measure is required")
    print(json.dumps(run_async(main_async(args))), flush=True)


if __name__ == "__main__":
    main()
