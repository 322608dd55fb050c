"""Prometheus metrics. Each server app and each worker owns its registry (so several can live
in one process, as in the tests); the server serves its own at /metrics, a worker on
WORKER_METRICS_PORT."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)

JOB_EVENTS = ("claimed", "completed", "failed", "retried", "canceled", "reclaimed", "handed_back", "lost")


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "menagerie_worker_jobs",
            "Jobs by what happened to them on this worker (reclaimed: taken back from a dead one)",
            ["event"],
            registry=self.registry,
        )
        self.job_events = {event: self.jobs.labels(event) for event in JOB_EVENTS}
        """Each event's child, looked up once: `labels()` costs more than the increment."""
        self.pickup = Histogram(
            "menagerie_worker_pickup_seconds",
            "From a job falling due (insert, retry time, hand-back) to its claim, database clock",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.run_time = Histogram(
            "menagerie_worker_run_seconds",
            "How long one attempt's handler ran",
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("menagerie_worker_jobs_in_flight", "Jobs running now", registry=self.registry)
        self.listener_reconnects = Counter(
            "menagerie_worker_listener_reconnects",
            "Times the LISTEN connection was lost and made again",
            registry=self.registry,
        )


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "menagerie_http_requests",
            "Requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "menagerie_http_request_seconds",
            "Time to the start of the response, by route and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "menagerie_http_open_event_streams", "Event streams open now", registry=self.registry
        )
        self.queue_depth = Gauge(
            "menagerie_queue_jobs",
            "Jobs waiting or running, by status (read at scrape from the partial indexes)",
            ["status"],
            registry=self.registry,
        )
        self.oldest_pending = Gauge(
            "menagerie_queue_oldest_pending_seconds",
            "How long the oldest due pending job has waited (0 when none)",
            registry=self.registry,
        )


class HttpMetricsMiddleware:
    """Counts every request by its route template (never the raw path: ids would explode the
    label space), and times it to the start of the response."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._timers: dict[tuple[str, str], Any] = {}
        self._counters: dict[tuple[str, str, int], Any] = {}

    def _timer(self, template: str, method: str) -> Any:
        """The histogram child for a route and method (labels() is slow enough to cache)."""
        key = (template, method)
        timer = self._timers.get(key)
        if timer is None:
            timer = self._timers[key] = self.metrics.latency.labels(template, method)
        return timer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self._timer(_template(scope), scope["method"]).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            self._counter(_template(scope), scope["method"], status).inc()

    def _counter(self, template: str, method: str, status: int) -> Any:
        """The request counter's child for a route, method and status, looked up once."""
        key = (template, method, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.metrics.requests.labels(template, method, str(status))
        return counter


def _template(scope: Scope) -> str:
    """The matched route's path template; "unmatched" for unknown paths."""
    route = scope.get("route")
    return route.path if isinstance(route, Route) else "unmatched"
