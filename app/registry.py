"""What a worker process is made of: every kind of job menagerie runs, configured from the
settings, the image provider its generations use, and the maintenance rounds of the layers
above the queue. The `menagerie worker`
command (worker.py, `menagerie run`) builds it here; the queue itself knows none of this."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
import httpcore
import httpx

from app import db, keys
from app.api import idempotency
from app.api.auth import ImageSigner, Lazy
from app.api.models import job_json
from app.images import generate, generations, s3, stores
from app.images.metrics import ProviderMetrics
from app.images.providers import Provider
from app.images.providers.http import Endpoint, new_client
from app.images.providers.local import LocalProvider
from app.images.providers.openai import OpenAIProvider
from app.images.providers.openrouter import OpenRouterProvider
from app.queue.kinds import Forget, Kind, Retry, configured
from app.queue.maintenance import Round
from app.queue.process import serve
from app.settings import SettingError, Settings, webhook_key
from app.webhooks.delivery import Deliveries
from app.webhooks.guard import Resolver, resolve


def endpoint(settings: Settings) -> Endpoint | None:
    """Where IMAGE_PROVIDER's HTTP model is and its key (None for the local renderer); raises
    SettingError when the key is missing. Only workers need a key: the server never calls a
    provider."""
    name = settings.image_provider
    if name == "local":
        return None
    key, base_url = (
        (settings.openai_api_key, settings.openai_base_url)
        if name == "openai"
        else (settings.openrouter_api_key, settings.openrouter_base_url)
    )
    if key is None or not key.get_secret_value().strip():
        raise SettingError(f"{name.upper()}_API_KEY", "", f"required when IMAGE_PROVIDER={name}")
    return Endpoint(
        name=name,
        base_url=str(base_url),
        key=key.get_secret_value().strip(),
        timeout=settings.image_provider_timeout,
        max_image_bytes=settings.max_image_bytes,
    )


def provider(settings: Settings, client: httpx.AsyncClient | None = None) -> Provider:
    """IMAGE_PROVIDER, built: HTTP providers share `client`, the process's one."""
    found = endpoint(settings)
    if found is None:
        return LocalProvider(delay=settings.image_provider_delay, size=settings.image_size)
    if client is None:
        raise ValueError(f"the {found.name} provider needs an HTTP client")
    if found.name == "openai":
        return OpenAIProvider(client, found, size=settings.openai_image_size)
    return OpenRouterProvider(client, found, modalities=settings.openrouter_modalities)


@contextlib.asynccontextmanager
async def http_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient | None]:
    """The worker process's one pooled HTTP client (None for the local renderer), closed on
    the way out."""
    if settings.image_provider == "local":
        yield None
        return
    # Room for every call in flight and the download of a linked image beside it.
    async with new_client(
        timeout=settings.image_provider_timeout, max_connections=2 * settings.provider_max_concurrency
    ) as client:
        yield client


def kinds(
    settings: Settings,
    pool: asyncpg.Pool,
    deliveries: Deliveries | None = None,
    *,
    image_provider: Provider | None = None,
    metrics: ProviderMetrics | None = None,
    image_stores: stores.Stores | None = None,
) -> list[Kind]:
    """Every registered kind, with its settings applied (`<KIND>_SLOTS`, ...): generations, and
    webhook deliveries when given `deliveries`. Generations are the kind of `image_provider`
    (IMAGE_PROVIDER's, the local renderer by default), run with the generation settings
    (WORKER_CONCURRENCY, JOB_TIMEOUT, ...) whatever its name; an HTTP provider's calls are
    bounded by PROVIDER_MAX_CONCURRENCY for the whole process. Images go to `image_stores`
    (IMAGE_STORE's by default)."""
    image_provider = image_provider or provider(settings)
    limiter = None if image_provider.name == "local" else asyncio.Semaphore(settings.provider_max_concurrency)
    generation = generate.kind(
        pool,
        image_provider,
        image_stores=image_stores or s3.stores_for(settings),
        db_patience=settings.lease_seconds,
        limiter=limiter,
        metrics=metrics,
        retry_cap=settings.retry_max_delay,
    )
    registered = [configured(generation, settings.kind(generations.KIND))]
    if deliveries is not None:
        webhook = deliveries.kind()
        registered.append(configured(webhook, settings.kind(webhook.name)))
    return registered


def retained(image_stores: stores.Stores) -> dict[str, Forget | None]:
    """What retention deletes with the finished jobs of kinds this worker does not run: the
    generations of the other providers (made before IMAGE_PROVIDER changed), their images
    included."""
    return {kind: stores.forgetting(image_stores) for kind in generations.KINDS}


def webhook_deliveries(
    settings: Settings,
    pool: asyncpg.Pool,
    *,
    resolver: Resolver = resolve,
    connector: httpcore.AsyncNetworkBackend | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Deliveries:
    """The `webhook` kind's state: signing with the job's key's webhook secret or
    WEBHOOK_SECRET, rendering generations with PUBLIC_BASE_URL's absolute URLs (image URLs
    signed afresh at each attempt with AUTH=keys). Tests pass their own `resolver`,
    `connector` and `ssl_context` (their CA)."""
    secret = settings.webhook_secret
    fallback = [] if secret is None else [webhook_key(secret.get_secret_value())]
    base = None if settings.public_base_url is None else str(settings.public_base_url).rstrip("/")
    configured = settings.image_url_secret
    images = ImageSigner(
        Lazy(
            pool,
            keys.IMAGE_URL_SECRET,
            None if configured is None else configured.get_secret_value().encode(),
        ),
        settings.image_url_ttl,
    )

    async def render(conn: db.Executor, job_id: UUID, version: int) -> bytes | None:
        if base is None:
            raise Retry("PUBLIC_BASE_URL is not set on this worker: a delivery's URLs need it")
        job = await generations.at_version(conn, job_id=job_id, version=version)
        if job is None:
            return None
        signer = await images.signer() if settings.auth == "keys" else None
        return job_json(job, base_url=base, signer=signer)

    return Deliveries(
        pool,
        render=render,
        keys=fallback,
        timeout=settings.webhook_timeout,
        allow_private=settings.webhook_allow_private,
        resolver=resolver,
        connector=connector,
        ssl_context=ssl_context,
        max_retry_after=max(settings.webhook_retry_delays),
    )


def rounds(settings: Settings, pool: asyncpg.Pool) -> list[Round]:
    """Maintenance rounds of the layers above the queue."""

    async def forget_expired_keys() -> None:
        await idempotency.forget_expired(pool, batch_size=settings.retention_batch_size)

    found = [Round("idempotency-keys", 600.0, forget_expired_keys)]
    bucket = s3.stores_for(settings).by_name.get(s3.NAME)
    if isinstance(bucket, s3.S3Store):
        s3_store = bucket

        async def delete_orphans() -> None:
            await s3.delete_orphans(pool, s3_store)

        found.append(Round("orphan-objects", 600.0, delete_orphans))
    return found


def pool_size(settings: Settings) -> int:
    """Connections a worker process may use: one per running generation (it stores its
    images), plus outcomes, heartbeat and maintenance, and a few for webhook deliveries (each
    holds one only to read the job and record the attempt)."""
    return settings.worker_concurrency + 8


async def serve_worker(settings: Settings) -> None:
    """Run one worker process: every registered kind (or those WORKER_KINDS names) and every
    layer's maintenance rounds, until SIGTERM or SIGINT."""
    endpoint(settings)  # a missing key stops the process before it connects anywhere
    pool = await db.create_pool(
        settings.database, size=pool_size(settings), application_name=db.WORKER_APPLICATION
    )
    deliveries = webhook_deliveries(settings, pool)
    metrics = ProviderMetrics()
    image_stores = s3.stores_for(settings)
    try:
        async with http_client(settings) as client:
            await serve(
                settings,
                pool=pool,
                registry=kinds(
                    settings,
                    pool,
                    deliveries,
                    image_provider=provider(settings, client),
                    metrics=metrics,
                    image_stores=image_stores,
                ),
                rounds=rounds(settings, pool),
                retained=retained(image_stores),
                collectors=[deliveries.metrics, *metrics.collectors],
            )
    finally:
        await deliveries.close()
        await pool.close()
