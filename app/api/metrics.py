"""The server's Prometheus metrics, served at /metrics. Each server app owns its registry (so
several can live in one process, as in the tests). A worker's are in app/queue/metrics.py."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge
from starlette.routing import Route
from starlette.types import Scope

from app.queue.metrics import CounterChild, FastCounter, FastHistogram, HistogramChild

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = FastCounter(
            "menagerie_http_requests",
            "Requests by route, method and status",
            labelnames=["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = FastHistogram(
            "menagerie_http_request_seconds",
            "Time to the start of the response, by route and method",
            labelnames=["route", "method"],
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
        self._by_key: dict[tuple[str, str, int], tuple[CounterChild, HistogramChild]] = {}

    def count_request(self, scope: Scope, status: int, seconds_to_start: float | None) -> None:
        """Count a request by its route template (never the raw path: ids would explode the
        label space) and time it to the start of its answer (None: it never started)."""
        counter, timer = self._children(_template(scope), scope["method"], status)
        counter.inc()
        if seconds_to_start is not None:
            timer.observe(seconds_to_start)

    def _children(self, template: str, method: str, status: int) -> tuple[CounterChild, HistogramChild]:
        """The counter and histogram children of a route, method and status, looked up once."""
        key = (template, method, status)
        children = self._by_key.get(key)
        if children is None:
            children = self._by_key[key] = (
                self.requests.labels(template, method, str(status)),
                self.latency.labels(template, method),
            )
        return children


def _template(scope: Scope) -> str:
    """The matched route's path template; "unmatched" for unknown paths."""
    route = scope.get("route")
    return route.path if isinstance(route, Route) else "unmatched"
