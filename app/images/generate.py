"""The generation kinds: make each missing image of a claimed generation and store it as soon
as it is made. There is one kind per provider (`generate` for the local renderer,
`generate-openai`, `generate-openrouter`): a job is created as the kind of the provider it was
made for, and a worker registers only the kind of the provider it has, so it never claims a job
meant for another."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg

from app import db
from app.images import generations, stores
from app.images.metrics import ProviderMetrics
from app.images.providers import Provider, ProviderError
from app.queue.kinds import Fail, Job, Kind, OwnershipLost, Retry
from app.sql import queries


def kind(
    pool: asyncpg.Pool,
    provider: Provider,
    *,
    image_stores: stores.Stores = stores.IN_DATABASE,
    db_patience: float = 30.0,
    limiter: asyncio.Semaphore | None = None,
    metrics: ProviderMetrics | None = None,
    retry_cap: float = 60.0,
) -> Kind:
    """The kind for `provider`, with its defaults (4 slots, 3 attempts, 300 s per attempt);
    settings adjust them at the entry point. Images go to `image_stores.writing`.

    Without a `limiter` the images of a job are made one after the other; with one, they are
    requested together, as many at once as the limiter (shared by the worker process) allows.
    Images already stored by an earlier attempt are kept, so a reclaimed job resumes. Database
    writes ride out an outage of up to `db_patience` seconds (a lease) rather than failing a
    job whose images were made; a store that cannot take an image makes the attempt a
    transient failure (retried on the kind's backoff). A transient provider error is retried
    on the kind's backoff, or after the provider's Retry-After when that is longer (at most
    `retry_cap` seconds).
    """
    calls = limiter if limiter is not None else contextlib.nullcontext()

    async def make(job: Job, wanted: Any, index: int) -> None:
        model = wanted["model"]
        async with calls:
            started = time.perf_counter()
            try:
                image = await provider.generate(
                    prompt=wanted["prompt"] or wanted["animal"],
                    model=model,
                    animal=wanted["animal"],
                    job_id=job.id,
                    index=index,
                )
            except ProviderError as exc:
                if metrics is not None:
                    outcome = "transient" if exc.transient else "permanent"
                    seconds = time.perf_counter() - started
                    metrics.observe(
                        provider.name, model, outcome, seconds, retry_after=exc.retry_after is not None
                    )
                reason = f"image {index}: {exc}"
                if not exc.transient:
                    raise Fail(reason) from exc
                at_least = None if exc.retry_after is None else min(exc.retry_after, retry_cap)
                raise Retry(reason, at_least=at_least) from exc
            seconds = time.perf_counter() - started
        if metrics is not None:
            metrics.observe(provider.name, model, "ok", seconds, retry_after=False)
        try:
            stored = await stores.save(
                pool,
                image_stores.writing,
                job_id=job.id,
                worker_id=job.worker_id,
                attempt=job.attempts,
                index=index,
                png=image.data,
                content_type=image.content_type,
                db_patience=db_patience,
                provider=provider.name,
                model=model,
                request_id=image.request_id,
                latency_ms=round(seconds * 1000),
            )
        except stores.StoreUnavailable as exc:
            raise Retry(f"image {index}: {exc}") from exc
        if not stored:
            raise OwnershipLost(job.id)

    async def generate(job: Job) -> None:
        wanted = await db.with_retries(
            lambda: pool.fetchrow(queries.generation_for_run, job.id), deadline=db_patience
        )
        if wanted is None:
            raise Fail("the generation this job was for no longer exists")
        done = set(wanted["image_indexes"])
        missing = [index for index in range(wanted["num_images"]) if index not in done]
        if limiter is None:
            for index in missing:
                await make(job, wanted, index)
            return
        try:
            async with asyncio.TaskGroup() as group:
                for index in missing:
                    group.create_task(make(job, wanted, index))
        except ExceptionGroup as failed:
            raise gravest(failed.exceptions) from None

    return Kind(
        name=generations.kind_for(provider.name),
        handler=generate,
        slots=4,
        timeout=300.0,
        max_attempts=3,
        watched=True,
        forget=stores.forgetting(image_stores),
    )


def gravest(errors: tuple[Exception, ...]) -> Exception:
    """Of the errors of images made together, the one that decides the attempt: the job lost,
    then a permanent failure, then the retry that asks to wait longest, then anything else."""
    for wanted in (OwnershipLost, Fail):
        for error in errors:
            if isinstance(error, wanted):
                return error
    retries = [error for error in errors if isinstance(error, Retry)]
    if retries:
        return max(retries, key=lambda retry: retry.at_least or 0.0)
    return errors[0]
