"""One worker process: the worker loop and the maintenance loop side by side, its metrics
port, and its signals. The entry point (worker.py) builds the kinds and the other layers'
maintenance rounds and hands them in: nothing here knows what a kind does."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping, Sequence

import asyncpg
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.registry import Collector

from app.queue.kinds import Forget, Kind
from app.queue.maintenance import Maintenance, Round, queue_rounds
from app.queue.worker import Timing, Worker
from app.settings import SettingError, Settings

log = logging.getLogger(__name__)


def timing(settings: Settings) -> Timing:
    return Timing(
        poll_interval=settings.worker_poll_interval,
        lease_seconds=settings.lease_seconds,
        shutdown_grace=settings.shutdown_grace,
    )


def selected(registry: Sequence[Kind], names: Sequence[str] | None) -> list[Kind]:
    """The kinds WORKER_KINDS names (every registered one when unset)."""
    if names is None:
        return list(registry)
    known = {kind.name: kind for kind in registry}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SettingError(
            "WORKER_KINDS", ",".join(names), f"no kind named {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return [known[name] for name in dict.fromkeys(names)]


def serve_metrics(registry: CollectorRegistry, port: int) -> None:
    """Serve /metrics on `port` from a background thread; a port in use stops the process."""
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        raise SystemExit(f"menagerie: cannot serve worker metrics on port {port}: {exc}") from None
    log.info("worker metrics on port %d", port, extra={"action": "metrics_listening"})


async def serve(
    settings: Settings,
    *,
    pool: asyncpg.Pool,
    registry: Sequence[Kind],
    rounds: Sequence[Round] = (),
    retained: Mapping[str, Forget | None] | None = None,
    collectors: Sequence[Collector] = (),
) -> None:
    """Run one worker for the kinds WORKER_KINDS selects from `registry`, with the queue's
    maintenance rounds and `rounds`, until SIGTERM or SIGINT (a second one skips the grace
    period). Retention deletes finished jobs of every registered kind, with its own data, and
    of the kinds in `retained` (kinds this worker does not run), with what each forgets.
    `collectors` (a kind's own metrics) are served beside the worker's."""
    worker = Worker(
        pool=pool,
        listen_url=settings.database,
        kinds=selected(registry, settings.worker_kinds),
        timing=timing(settings),
    )
    metrics = worker.metrics
    for collector in collectors:
        metrics.registry.register(collector)
    maintenance = Maintenance(
        [
            *queue_rounds(
                pool,
                lease_seconds=settings.lease_seconds,
                retention_days=settings.retention_days,
                retention_batch=settings.retention_batch_size,
                forget={**(retained or {}), **{kind.name: kind.forget for kind in registry}},
                on_reclaimed=metrics.reclaimed,
            ),
            *rounds,
        ],
        on_failure=lambda name: metrics.maintenance_failures.labels(name).inc(),
    )
    if settings.worker_metrics_port is not None:
        serve_metrics(metrics.registry, settings.worker_metrics_port)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    maintaining = asyncio.create_task(maintenance.run())
    try:
        await worker.run()
    finally:
        maintaining.cancel()
        await asyncio.gather(maintaining, return_exceptions=True)
