"""What a generation job does: render each missing image and store it as it is finished."""

from __future__ import annotations

import asyncpg

from app import images
from app.models import Job
from app.providers import Provider, ProviderError
from app.queue import Handler, JobFailed, OwnershipLost


def handler(pool: asyncpg.Pool, provider: Provider) -> Handler:
    """The queue handler for generation jobs.

    Images already stored by an earlier attempt are kept, so a reclaimed job resumes.
    """

    async def generate(job: Job) -> None:
        done = await images.stored_indexes(pool, job_id=job.id)
        for index in range(job.num_images):
            if index in done:
                continue
            try:
                png = await provider.generate(animal=job.animal, job_id=job.id, index=index)
            except ProviderError as exc:
                raise JobFailed(f"image {index + 1} of {job.num_images}: {exc}") from exc
            stored = await images.store(
                pool,
                job_id=job.id,
                worker_id=job.worker_id or "",
                attempt=job.attempts,
                index=index,
                png=png,
            )
            if not stored:
                raise OwnershipLost(job.id)

    return generate
