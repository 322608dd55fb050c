"""What a generation job does: render each missing image and store it as it is finished."""

from __future__ import annotations

import asyncpg

from app import db, images
from app.models import Job
from app.providers import Provider, ProviderError
from app.queue import Handler, JobFailed, OwnershipLost


def handler(pool: asyncpg.Pool, provider: Provider, *, db_patience: float = 30.0) -> Handler:
    """The queue handler for generation jobs.

    Images already stored by an earlier attempt are kept, so a reclaimed job resumes. Database
    writes ride out an outage of up to `db_patience` seconds (a lease) rather than failing a
    job whose images were made.
    """

    async def generate(job: Job) -> None:
        done = set(job.image_indexes)  # read by the claim: images kept from earlier attempts
        for index in range(job.num_images):
            if index in done:
                continue
            try:
                png = await provider.generate(animal=job.animal, job_id=job.id, index=index)
            except ProviderError as exc:
                raise JobFailed(
                f"image {index + 1} of {job.num_images}: {exc}", retryable=exc.transient
            ) from exc
            stored = await db.with_retries(
                lambda: images.store(
                    pool,
                    job_id=job.id,
                    worker_id=job.worker_id or "",
                    attempt=job.attempts,
                    index=index,
                    png=png,
                ),
                deadline=db_patience,
            )
            if not stored:
                raise OwnershipLost(job.id)

    return generate
