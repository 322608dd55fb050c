"""A worker's Prometheus metrics, labelled by kind. Each worker owns its registry (several can
live in one process, as in the tests) and serves it on WORKER_METRICS_PORT.

Per-job histograms are `FastHistogram`s: prometheus_client's take a lock and a dozen calls per
observation, which at tens of thousands of jobs a second was a tenth of the worker's CPU.
Counters are incremented once per batch, not once per job."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily, Metric

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
RUN_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)

JOB_EVENTS = ("claimed", "completed", "failed", "retried", "canceled", "reclaimed", "handed_back", "lost")


class HistogramChild:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        """Observations per bucket, not cumulative; the last one is +Inf."""
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


class FastHistogram:
    """A histogram whose observe() is a bisect and two additions, collected as a Prometheus
    histogram. Written from the event loop only; read by the metrics thread, which at worst sees
    a count one observation ahead of the sum."""

    def __init__(
        self,
        name: str,
        documentation: str,
        *,
        buckets: Sequence[float],
        labelnames: Sequence[str] = (),
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = tuple(sorted(buckets))
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = HistogramChild(self._bounds)
        return child

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, child in list(self._children.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*map(_bound, self._bounds), "+Inf"), child.counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric(list(values), buckets, child.sum)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)


def _bound(value: float) -> str:
    return repr(float(value))


class WorkerMetrics:
    def __init__(self, kinds: Iterable[str]) -> None:
        kinds = list(kinds)
        self.registry = CollectorRegistry()
        self._jobs = jobs = Counter(
            "menagerie_worker_jobs",
            "Jobs by kind and what happened to them on this worker (reclaimed: taken back from a dead one)",
            ["kind", "event"],
            registry=self.registry,
        )
        self.jobs = {(kind, event): jobs.labels(kind, event) for kind in kinds for event in JOB_EVENTS}
        """Each child, looked up once: `labels()` costs more than the increment."""
        pickup = FastHistogram(
            "menagerie_worker_pickup_seconds",
            "From a job falling due (insert, retry time, hand-back) to its claim, database clock",
            labelnames=["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.pickup = {kind: pickup.labels(kind) for kind in kinds}
        run_time = FastHistogram(
            "menagerie_worker_run_seconds",
            "How long one attempt's handler ran",
            labelnames=["kind"],
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self.run_time = {kind: run_time.labels(kind) for kind in kinds}
        in_flight = Gauge(
            "menagerie_worker_jobs_in_flight", "Jobs whose handler runs now", ["kind"], registry=self.registry
        )
        self.in_flight = {kind: in_flight.labels(kind) for kind in kinds}
        self.claim_time = FastHistogram(
            "menagerie_worker_claim_seconds",
            "How long one claim statement took (all kinds at once)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.listener_reconnects = Counter(
            "menagerie_worker_listener_reconnects",
            "Times the LISTEN connection was lost and made again",
            registry=self.registry,
        )
        self.maintenance_failures = Counter(
            "menagerie_worker_maintenance_failures",
            "Maintenance rounds that raised, by round",
            ["round"],
            registry=self.registry,
        )

    def reclaimed(self, kind: str) -> None:
        """Count a job of `kind` (any kind, not only this worker's) reclaimed from a dead worker."""
        self._jobs.labels(kind, "reclaimed").inc()
