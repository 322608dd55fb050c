"""A worker's Prometheus metrics, labelled by kind. Each worker owns its registry (several can
live in one process, as in the tests) and serves it on WORKER_METRICS_PORT.

Per-job histograms are `FastHistogram`s (see `_Family`); counters are incremented once per
batch, not once per job. The server's request metrics use the same fast families."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
RUN_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)

JOB_EVENTS = ("claimed", "completed", "failed", "retried", "canceled", "reclaimed", "handed_back", "lost")


C = TypeVar("C")


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


class _Family(Collector, Generic[C]):
    """A metric family whose children are plain objects changed without a lock, collected as a
    Prometheus family: prometheus_client's own take a lock and a dozen calls per change, which
    at tens of thousands of jobs (or requests) a second was a tenth of the process's CPU.
    Written from the event loop only; a metrics thread reading it at worst sees a histogram's
    count one observation ahead of its sum."""

    def __init__(
        self,
        name: str,
        documentation: str,
        *,
        labelnames: Sequence[str] = (),
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], C] = {}
        registry.register(self)

    def labels(self, *values: str) -> C:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._child()
        return child

    def _child(self) -> C:
        raise NotImplementedError

    def _family(self) -> Metric:
        raise NotImplementedError

    def describe(self) -> Iterator[Metric]:
        yield self._family()


class FastHistogram(_Family[HistogramChild]):
    """A histogram whose observe() is a bisect and two additions."""

    def __init__(
        self,
        name: str,
        documentation: str,
        *,
        buckets: Sequence[float],
        labelnames: Sequence[str] = (),
        registry: CollectorRegistry,
    ) -> None:
        self._bounds = tuple(sorted(buckets))
        super().__init__(name, documentation, labelnames=labelnames, registry=registry)

    def _child(self) -> HistogramChild:
        return HistogramChild(self._bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, child in list(self._children.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*map(_bound, self._bounds), "+Inf"), child.counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric(list(values), buckets, child.sum)
        yield family


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class FastCounter(_Family[CounterChild]):
    """A counter whose inc() is one addition."""

    def _child(self) -> CounterChild:
        return CounterChild()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, child in list(self._children.items()):
            family.add_metric(list(values), child.value)
        yield family


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
