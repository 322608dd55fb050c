"""A worker's metrics of its image provider: calls by provider, model and outcome, their
latency, and retries the provider asked to wait for (Retry-After). Served beside the queue's
own on WORKER_METRICS_PORT."""

from __future__ import annotations

from prometheus_client import Counter, Histogram
from prometheus_client.registry import Collector

from app.queue.metrics import RUN_BUCKETS

OUTCOMES = ("ok", "transient", "permanent")


class ProviderMetrics:
    def __init__(self) -> None:
        self.calls = Counter(
            "menagerie_provider_calls",
            "Image provider calls by provider, model and outcome (ok, transient, permanent)",
            ["provider", "model", "outcome"],
            registry=None,
        )
        self.latency = Histogram(
            "menagerie_provider_call_seconds",
            "How long one provider call took (an image's download included), by provider and model",
            ["provider", "model"],
            buckets=RUN_BUCKETS,
            registry=None,
        )
        self.retry_after = Counter(
            "menagerie_provider_retry_after",
            "Transient provider failures that came with a Retry-After, by provider and model "
            "(the retry waits for it when it is longer than the backoff)",
            ["provider", "model"],
            registry=None,
        )

    @property
    def collectors(self) -> list[Collector]:
        return [self.calls, self.latency, self.retry_after]

    def observe(
        self, provider: str, model: str | None, outcome: str, seconds: float, *, retry_after: bool
    ) -> None:
        model = model or ""
        self.calls.labels(provider, model, outcome).inc()
        self.latency.labels(provider, model).observe(seconds)
        if retry_after:
            self.retry_after.labels(provider, model).inc()
