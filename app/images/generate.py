"""The `generate` kind: render each missing image of a claimed generation and store it as soon
as it is made."""

from __future__ import annotations

import asyncpg

from app import db
from app.images import generations, stores
from app.images.providers import Provider, ProviderError
from app.queue.kinds import Fail, Job, Kind, OwnershipLost, Retry
from app.sql import queries


def kind(
    pool: asyncpg.Pool,
    provider: Provider,
    *,
    image_stores: stores.Stores = stores.IN_DATABASE,
    db_patience: float = 30.0,
) -> Kind:
    """The kind, with its defaults (4 slots, 3 attempts, 300 s per attempt); settings adjust
    them at the entry point. Images go to `image_stores.writing`.

    Images already stored by an earlier attempt are kept, so a reclaimed job resumes. Database
    writes ride out an outage of up to `db_patience` seconds (a lease) rather than failing a
    job whose images were made; a store that cannot take an image makes the attempt a
    transient failure (retried on the kind's backoff).
    """

    async def generate(job: Job) -> None:
        wanted = await db.with_retries(
            lambda: pool.fetchrow(queries.generation_for_run, job.id), deadline=db_patience
        )
        if wanted is None:
            raise Fail("the generation this job was for no longer exists")
        done = set(wanted["image_indexes"])
        total = wanted["num_images"]
        for index in range(total):
            if index in done:
                continue
            try:
                png = await provider.generate(animal=wanted["animal"], job_id=job.id, index=index)
            except ProviderError as exc:
                reason = f"image {index}: {exc}"
                raise (Retry(reason) if exc.transient else Fail(reason)) from exc
            try:
                stored = await stores.save(
                    pool,
                    image_stores.writing,
                    job_id=job.id,
                    worker_id=job.worker_id,
                    attempt=job.attempts,
                    index=index,
                    png=png,
                    db_patience=db_patience,
                )
            except stores.StoreUnavailable as exc:
                raise Retry(f"image {index}: {exc}") from exc
            if not stored:
                raise OwnershipLost(job.id)

    return Kind(
        name=generations.KIND,
        handler=generate,
        slots=4,
        timeout=300.0,
        max_attempts=3,
        watched=True,
        forget=stores.forgetting(image_stores),
    )
