"""The HTTP API: endpoints and the app factory with its lifespan."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from importlib.metadata import version
from typing import Any, TypedDict
from uuid import UUID

import asyncpg
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app import db, keys
from app.api import (
    auth,
    backlog,
    cursors,
    docs,
    etags,
    feed,
    headers,
    idempotency,
    openapi,
    page,
    problems,
    streams,
    swagger,
)
from app.api.auth import AuthMiddleware
from app.api.edge import EdgeMiddleware
from app.api.metrics import ServerMetrics
from app.api.models import (
    DEFAULT_WEBHOOK_EVENTS,
    MAX_BODY_BYTES,
    MAX_IDEMPOTENCY_KEY,
    MAX_WAIT_SECONDS,
    GenerationRequest,
    ListQuery,
    Signer,
    WebhookPolicy,
    history_json,
    job_json,
    jobs_json,
    queue_json,
    webhook_attempts_json,
)
from app.api.openapi import documented
from app.api.problems import Problem, exception_handlers, readable, validation_problem
from app.batching import Batcher
from app.images import generations, s3, stores
from app.images.animals import ANIMALS
from app.images.generations import Generation
from app.images.generations import Request as GenerationSpec
from app.migrate import migration_ids
from app.queue import overview
from app.queue.kinds import Status
from app.settings import Settings
from app.webhooks import delivery

log = logging.getLogger(__name__)

JSON_TYPES = ("application/json",)


class State(TypedDict):
    settings: Settings
    pool: asyncpg.Pool
    migration_ids: list[str]
    watch: streams.JobWatch
    backlog: backlog.Backlog
    metrics: ServerMetrics
    creations: Batcher[GenerationSpec, Generation]
    stores: stores.Stores
    webhook_max_attempts: int
    auth: auth.Auth | None


# Requests


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or a Problem: 415 not JSON, 413 too big, 400 malformed."""
    media_type = (header(request, b"content-type") or "").split(";")[0].strip().lower()
    if media_type not in JSON_TYPES and not media_type.endswith("+json"):
        raise Problem(415, "send the body as application/json")
    declared = header(request, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise Problem(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise Problem(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
    except RecursionError as exc:
        raise Problem(400, "the body nests too deeply to be read", type="/problems/invalid-json") from exc
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, numbers of over 4,300 digits
        raise Problem(
            400, f"the body is not valid JSON: {readable(str(exc))}", type="/problems/invalid-json"
        ) from exc
    if not isinstance(data, dict):
        raise Problem(400, "the body must be a JSON object", type="/problems/invalid-json")
    return data


def parse_job_id(request: Request) -> UUID:
    try:
        return UUID(request.path_params["job_id"])
    except ValueError:
        raise problems.no_such_job() from None


def header(request: Request, name: bytes) -> str | None:
    """One request header (lower-case `name`); see headers.header."""
    return headers.header(request.scope, name)


async def image_signer(request: Request, job: Generation | None = None) -> Signer | None:
    """Signs the image URLs of this request's answer (AUTH=keys); None with AUTH=none, or
    for a `job` that has no images yet."""
    found: auth.Auth | None = request.state.auth
    if found is None or (job is not None and not job.image_indexes):
        return None
    return await found.images.signer()


def base_url(request: Request) -> str:
    """PUBLIC_BASE_URL, or the scheme and Host of the request (proxy headers applied)."""
    configured = request.state.settings.public_base_url
    if configured is not None:
        return str(configured).rstrip("/")
    scope = request.scope  # not request.url: building the whole URL costs more than the rest of this
    host = header(request, b"host") or "{}:{}".format(*scope["server"])
    return f"{scope['scheme']}://{host}{scope.get('root_path', '')}"


def job_response(
    request: Request,
    job: Generation,
    *,
    signer: Signer | None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """The job as JSON with a strong ETag of its bytes; 304 when If-None-Match has it."""
    body = job_json(job, base_url=base_url(request), signer=signer)
    etag = etags.of(body)
    answer_headers = {**(headers or {}), "ETag": etag}
    if status_code == 200 and etags.matches(header(request, b"if-none-match"), etag):
        return Response(status_code=304, headers=answer_headers)
    return Response(body, status_code=status_code, headers=answer_headers, media_type="application/json")


def requested_wait(request: Request) -> int | None:
    """Seconds asked for with `Prefer: wait=N` (RFC 7240), at most 60; None when not asked."""
    prefer = header(request, b"prefer")
    if not prefer:
        return None
    found = re.search(r"(?:^|[,;\s])wait\s*=\s*\"?(\d{1,6})\"?", prefer)
    return min(int(found.group(1)), MAX_WAIT_SECONDS) if found else None


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        return cursors.decode(cursor)
    except ValueError:
        raise Problem.invalid(["query", "cursor"], "not a cursor this service issued") from None


# Endpoints


@documented(docs.CREATE_GENERATION)
async def create_generation(request: Request) -> Response:
    state = request.state
    settings: Settings = state.settings
    data = await read_json_object(request)
    try:
        wanted = GenerationRequest.model_validate(
            data,
            context={
                "max_images": settings.max_images_per_job,
                "webhooks": webhook_policy(settings, auth.caller(request.scope)),
            },
        )
    except ValidationError as exc:
        raise validation_problem(exc, where="body") from None
    key = header(request, b"idempotency-key")
    if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise Problem(400, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    owner = auth.caller(request.scope)
    fingerprint, replay = "", None
    if key is not None:
        fingerprint = hashlib.sha256(
            # Without a webhook, the body's fingerprint is what it was before webhooks existed.
            wanted.model_dump_json(
                by_alias=True, exclude=set() if wanted.webhook else {"webhook", "webhook_events"}
            ).encode()
        ).hexdigest()
        replay = await known_job(state.pool, key=key, fingerprint=fingerprint, owner=owner)
    animal = wanted.animal or random.choice(ANIMALS)
    spec = GenerationSpec(
        num_images=wanted.num_images,
        animal=animal,
        max_attempts=settings.job_max_attempts,
        webhook=wanted.webhook,
        webhook_events=tuple(wanted.webhook_events or DEFAULT_WEBHOOK_EVENTS),
        webhook_max_attempts=state.webhook_max_attempts,
        owner=None if owner is None else owner.id,
        prompt=settings.prompt(animal),
        provider=settings.image_provider,
        model=settings.image_model,
    )
    replayed = replay is not None
    if replay is not None:
        job = replay
    else:
        if owner is not None and owner.max_pending is not None:
            await check_pending(state.pool, owner, owner.max_pending)
        job, replayed = await create(state, spec, key=key, fingerprint=fingerprint)
    if not replayed:
        log.info(
            "created job %s",
            job.id,
            extra={
                "action": "job_created",
                "job_id": str(job.id),
                "key": None if owner is None else owner.prefix,
            },
        )
    headers = {"Location": f"/generations/{job.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    wait = requested_wait(request)
    if wait is not None:
        job = await streams.wait_until_terminal(state.pool, state.watch, job_id=job.id, timeout=wait) or job
        headers["Preference-Applied"] = f"wait={wait}"
    return job_response(
        request, job, signer=await image_signer(request, job), status_code=202, headers=headers
    )


async def check_pending(pool: asyncpg.Pool, key: keys.Key, limit: int) -> None:
    """A 429 when the key already has `limit` (its --max-pending) generations waiting."""
    if await keys.pending_count(pool, key_id=key.id, cap=limit) >= limit:
        raise problems.too_many_pending(limit)


async def create(
    state: Any, spec: GenerationSpec, *, key: str | None, fingerprint: str
) -> tuple[Generation, bool]:
    """Create the generation, under its Idempotency-Key when there is one (True: the key's
    job, made by a request that raced this one), holding a place in the backlog meanwhile."""
    settings: Settings = state.settings
    try:
        async with state.backlog.admit(state.pool):
            if key is None:
                return await state.creations.submit(spec), False
            try:
                job, replayed = await idempotency.create_once(
                    state.pool, key=key, fingerprint=fingerprint, ttl=settings.idempotency_ttl, request=spec
                )
            except idempotency.IdempotencyConflict:
                raise problems.key_reused() from None
            if replayed:
                state.backlog.give_back()
            return job, replayed
    except backlog.Full:
        raise problems.queue_full(state.backlog.limit) from None


async def known_job(
    pool: asyncpg.Pool, *, key: str, fingerprint: str, owner: keys.Key | None
) -> Generation | None:
    """The job an Idempotency-Key of this API key already made (a replay needs no room in the
    queue)."""
    try:
        return await idempotency.replay(
            pool, key=key, fingerprint=fingerprint, owner=None if owner is None else owner.id
        )
    except idempotency.IdempotencyConflict:
        raise problems.key_reused() from None


@documented(docs.GET_GENERATION)
async def get_generation(request: Request) -> Response:
    state = request.state
    job_id = parse_job_id(request)
    wait = requested_wait(request)
    viewer = auth.viewer(request.scope)
    headers = {}
    if wait is None:
        job = await generations.get(state.pool, job_id=job_id, viewer=viewer)
    else:
        job = await streams.wait_until_terminal(
            state.pool, state.watch, job_id=job_id, timeout=wait, viewer=viewer
        )
        headers["Preference-Applied"] = f"wait={wait}"
    if job is None:
        raise problems.no_such_job()
    return job_response(request, job, signer=await image_signer(request, job), headers=headers)


@documented(docs.JOB_EVENTS)
async def job_events(request: Request) -> Response:
    """Server-Sent Events: the job now, then one event per change, closed once terminal."""
    state = request.state
    job_id = parse_job_id(request)
    body = streams.stream(
        state.pool,
        state.watch,
        job_id=job_id,
        last_event_id=header(request, b"last-event-id"),
        base_url=base_url(request),
        heartbeat=state.settings.sse_heartbeat,
        viewer=auth.viewer(request.scope),
        signer=await image_signer(request),
    )
    first = await anext(body, None)  # the job's first read, under its watch
    if first is None:
        raise problems.no_such_job()
    return StreamingResponse(
        counted(first, body, state.metrics.open_streams),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def requested_position(request: Request) -> int | None:
    """Where a client of GET /generations/events resumes: `Last-Event-ID` (sent by EventSource
    when it reconnects by itself), else the `lastEventId` query parameter (a page that opens a
    new EventSource after a refusal has no other way to send it); None: from now."""
    found = None
    for where, name, given in (
        ("query", "lastEventId", request.query_params.get("lastEventId")),
        ("header", "Last-Event-ID", header(request, b"last-event-id")),
    ):
        if given is None:
            continue
        if not (given.isascii() and given.isdigit() and len(given) <= 18):
            raise Problem.invalid([where, name], "not an event id this service issued")
        found = int(given)
    return found


@documented(docs.ALL_EVENTS)
async def all_events(request: Request) -> Response:
    """Server-Sent Events: every change to the caller's generations, from now or from an
    event id."""
    state = request.state
    root = base_url(request)
    keyed: auth.Auth | None = state.auth
    viewer = auth.viewer(request.scope)
    if keyed is not None and auth.caller(request.scope) is None:  # no key: a stream token
        key = await keyed.stream_key(request.query_params.get("token", ""))
        if key is None:
            raise Problem(
                401,
                "the stream token is not valid or has expired: ask for a new one",
                type="/problems/unauthorized",
            )
        viewer = key.viewer

    def render(job: Generation, signer: Signer | None) -> str:
        return job_json(job, base_url=root, signer=signer).decode()

    body = feed.stream(
        state.pool,
        state.watch,
        after=requested_position(request),
        heartbeat=state.settings.sse_heartbeat,
        viewer=viewer,
        render=render,
        signer=lambda: image_signer(request),
    )
    first = await anext(body)  # reads the database: a 503 now rather than a broken stream
    return StreamingResponse(
        counted(first, body, state.metrics.open_streams),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@documented(docs.STREAM_TOKEN)
async def stream_token(request: Request) -> Response:
    """A short-lived token that opens GET /generations/events for the caller's key."""
    keyed: auth.Auth | None = request.state.auth
    key = auth.caller(request.scope)
    if keyed is None or key is None:
        raise Problem(404, "no token is needed: this server asks for no key (AUTH=none)")
    token = await keyed.streams.issue(key)
    return JSONResponse({"token": token, "expiresIn": int(keyed.streams.ttl)})


@documented(docs.JOB_HISTORY)
async def job_history(request: Request) -> Response:
    """Every recorded change of one job, for the dashboard's detail view."""
    pool = request.state.pool
    job_id = parse_job_id(request)
    viewer = auth.viewer(request.scope)
    moments = await generations.history(pool, job_id=job_id, viewer=viewer)
    if not moments and await generations.get(pool, job_id=job_id, viewer=viewer) is None:
        raise problems.no_such_job()
    return Response(history_json(moments), media_type="application/json")


@documented(docs.QUEUE)
async def queue_overview(request: Request) -> Response:
    """The queue at a glance, for operators and the dashboard's strip: admin keys only, since
    it counts every client's jobs."""
    key = auth.caller(request.scope)
    if key is not None and not key.admin:
        raise Problem(403, "only an admin key may read the queue", type="/problems/admin-only")
    return Response(queue_json(await overview.read(request.state.pool)), media_type="application/json")


@documented(docs.LIST_GENERATIONS)
async def list_generations(request: Request) -> Response:
    try:
        query = ListQuery.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise validation_problem(exc, where="query") from None
    after = decode_cursor(query.cursor) if query.cursor else None
    page = await generations.list_page(
        request.state.pool,
        status=query.status,
        after=after,
        limit=query.limit + 1,
        viewer=auth.viewer(request.scope),
    )
    headers = {}
    root = base_url(request)
    if len(page) > query.limit:
        page = page[: query.limit]
        last = page[-1]
        next_query = request.url.include_query_params(cursor=cursors.encode(last.created_at, last.id)).query
        headers["Link"] = f'<{root}/generations?{next_query}>; rel="next"'
    body = jobs_json(page, base_url=root, signer=await image_signer(request))
    return Response(body, headers=headers, media_type="application/json")


@documented(docs.GET_IMAGE)
async def get_image(request: Request) -> Response:
    job_id = parse_job_id(request)
    name: str = request.path_params["name"]
    stem, _, extension = name.partition(".")
    canonical = stem.isascii() and stem.isdigit() and len(stem) <= 6 and str(int(stem)) == stem
    if not canonical:
        raise problems.no_such_image()
    keyed: auth.Auth | None = request.state.auth
    viewer = auth.viewer(request.scope)
    if keyed is not None and auth.caller(request.scope) is None:  # no key: a signed URL
        query = request.query_params
        signed = await keyed.images.valid(
            request.url.path, expires=query.get("expires"), signature=query.get("sig")
        )
        if not signed:
            raise problems.no_such_image()
    state = request.state
    image = await stores.get(state.pool, job_id=job_id, index=int(stem), viewer=viewer)
    if image is None:
        raise problems.no_such_image()
    if extension != stores.EXTENSIONS[image.content_type]:
        raise problems.no_such_image()
    etag = f'"{image.sha256}"'
    # With keys an image is one client's: a shared cache must not keep it.
    visibility = "public" if keyed is None else "private"
    headers = {"ETag": etag, "Cache-Control": f"{visibility}, max-age=31536000, immutable"}
    if etags.matches(header(request, b"if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    if image.png is not None:
        return Response(image.png, headers=headers, media_type=image.content_type)
    return await object_response(state, image, headers)


async def object_response(state: Any, image: stores.Image, headers: dict[str, str]) -> Response:
    """An image kept in object storage: streamed from its store (IMAGE_DELIVERY=proxy), or a
    307 to a presigned URL (redirect); a store that does not answer is a 503."""
    settings: Settings = state.settings
    try:
        store = state.stores.of(image)
        if settings.image_delivery == "redirect":
            url = await store.url(image, ttl=settings.s3_presign_ttl)
            if url is not None:  # the link expires: cache the answer for half its life
                cache = f"private, max-age={settings.s3_presign_ttl // 2}"
                return Response(status_code=307, headers={"Location": url, "Cache-Control": cache})
        body = await store.open(image)
    except stores.StoreUnavailable as exc:
        raise problems.store_unavailable(str(exc)) from None
    except LookupError as exc:
        log.error("image %s: %s", image.key, exc, extra={"action": "image_missing"})
        raise problems.no_such_image() from None
    return StreamingResponse(
        body, headers={**headers, "Content-Length": str(image.size)}, media_type=image.content_type
    )


@documented(docs.CANCEL_GENERATION)
async def cancel_generation(request: Request) -> Response:
    """Cancel a pending or processing job; repeating it is harmless; a finished job is 409."""
    pool = request.state.pool
    job_id = parse_job_id(request)
    viewer = auth.viewer(request.scope)
    canceled = await generations.cancel(pool, job_id=job_id, viewer=viewer)
    job = await generations.get(pool, job_id=job_id, viewer=viewer)
    if job is None:
        raise problems.no_such_job()
    if canceled:
        log.info("canceled job %s", job.id, extra={"action": "job_canceled", "job_id": str(job.id)})
    elif job.status in (Status.COMPLETED, Status.FAILED):
        raise problems.job_finished(job.status.value)
    return job_response(request, job, signer=await image_signer(request, job))


@documented(docs.LIST_WEBHOOK_ATTEMPTS)
async def list_webhook_attempts(request: Request) -> Response:
    """Every attempt to deliver the job's webhooks, oldest first; to the job's owner only."""
    pool = request.state.pool
    job_id = parse_job_id(request)
    job = await generations.get(pool, job_id=job_id, viewer=auth.viewer(request.scope))
    if job is None:
        raise problems.no_such_job()
    attempts = await delivery.attempts(pool, job_id=job_id)
    return Response(webhook_attempts_json(attempts), media_type="application/json")


@documented(docs.LIST_ANIMALS)
async def list_animals(request: Request) -> Response:
    return JSONResponse(list(ANIMALS))


@documented(docs.METRICS)
async def metrics_endpoint(request: Request) -> Response:
    state = request.state
    metrics: ServerMetrics = state.metrics
    with suppress(db.Unavailable, db.StatementFailed):
        depth = await generations.queue_depth(state.pool, kind=state.backlog.kind)
        metrics.queue_depth.labels("pending").set(depth["pending"])
        metrics.queue_depth.labels("processing").set(depth["processing"])
        oldest = depth["oldest_due"]
        metrics.oldest_pending.set((depth["now"] - oldest).total_seconds() if oldest else 0)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def counted(first: str, rest: AsyncIterator[str], gauge: Gauge) -> AsyncIterator[str]:
    """`first`, then the rest of a stream, counted in `gauge` while it is open."""
    gauge.inc()
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        gauge.dec()


async def openapi_document(request: Request) -> Response:
    return Response(request.app.state.openapi, media_type="application/json")


@documented(docs.HEALTHZ)
async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


@documented(docs.READYZ)
async def readyz(request: Request) -> Response:
    try:
        migrated = await db.schema_is_migrated(request.state.pool, migration_ids=request.state.migration_ids)
    except db.Unavailable as exc:
        raise Problem(503, f"the database does not answer: {exc}", headers={"Retry-After": "1"}) from None
    if not migrated:
        raise Problem(503, "the database schema is not migrated", headers={"Retry-After": "5"})
    image_stores: stores.Stores = request.state.stores
    try:
        await image_stores.writing.check()
    except (stores.StoreUnavailable, stores.StoreMisconfigured) as exc:
        raise problems.store_unavailable(str(exc)) from None
    return JSONResponse({"status": "ready", "imageStore": image_stores.writing.name})


def webhook_policy(settings: Settings, caller: keys.Key | None) -> WebhookPolicy:
    """What this server accepts of webhooks from `caller` (None: AUTH=none): none without
    PUBLIC_BASE_URL (a worker builds a delivery's URLs from it) or a secret to sign them with
    (the key's own webhook secret, else WEBHOOK_SECRET)."""
    unavailable = None
    if settings.public_base_url is None:
        unavailable = "webhooks need PUBLIC_BASE_URL set on the server: deliveries carry absolute URLs"
    elif settings.webhook_secret is None and not (caller is not None and caller.signs_webhooks):
        unavailable = (
            "webhooks need WEBHOOK_SECRET set on the server: deliveries are signed with it"
            if caller is None
            else "this key has no webhook secret: `menagerie keys rotate-webhook-secret NAME` makes one"
        )
    return WebhookPolicy(unavailable=unavailable, allow_private=settings.webhook_allow_private)


def create_app(settings: Settings) -> Starlette:
    metrics = ServerMetrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        pool = await db.create_pool(
            settings.database, size=settings.db_pool_size, application_name=db.SERVER_APPLICATION
        )
        watch = streams.JobWatch(settings.database)
        listening = asyncio.create_task(watch.listener.run())
        try:
            yield {
                "settings": settings,
                "pool": pool,
                "migration_ids": migration_ids(),
                "watch": watch,
                "backlog": backlog.Backlog(
                    settings.max_pending_jobs, kind=generations.kind_for(settings.image_provider)
                ),
                "metrics": metrics,
                "creations": generations.creations(pool, max_batch=settings.insert_batch_max),
                "stores": s3.stores_for(settings),
                "webhook_max_attempts": settings.kind(delivery.KIND).max_attempts or 1,
                "auth": None
                if settings.auth == "none"
                else auth.Auth(
                    pool,
                    image_url_ttl=settings.image_url_ttl,
                    image_url_secret=None
                    if settings.image_url_secret is None
                    else settings.image_url_secret.get_secret_value().encode(),
                    stream_token_ttl=settings.stream_token_ttl,
                ),
            }
        finally:
            listening.cancel()
            with suppress(asyncio.CancelledError):
                await listening
            await pool.close()

    routes = [
        # The busiest first: the router tries each route's pattern in turn.
        Route("/generations/events", all_events, methods=["GET"]),  # before {job_id}
        Route("/generations/{job_id}", get_generation, methods=["GET"]),
        Route("/generations", create_generation, methods=["POST"]),
        Route("/generations", list_generations, methods=["GET"]),
        Route("/generations/events/token", stream_token, methods=["POST"]),
        Route("/generations/{job_id}/cancel", cancel_generation, methods=["POST"]),
        Route("/generations/{job_id}/events", job_events, methods=["GET"]),
        Route("/generations/{job_id}/webhooks", list_webhook_attempts, methods=["GET"]),
        Route("/generations/{job_id}/history", job_history, methods=["GET"]),
        Route("/images/{job_id}/{name}", get_image, methods=["GET"]),
        Route("/animals", list_animals, methods=["GET"]),
        Route("/queue", queue_overview, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_document, methods=["GET"]),
        *swagger.routes(),
        *page.routes(image_origin=image_origin(settings)),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(EdgeMiddleware, metrics=metrics),
            *cors(settings),
            *([Middleware(AuthMiddleware)] if settings.auth == "keys" else []),
        ],
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    app.state.openapi = JSONResponse(  # rendered once: it never changes while the app runs
        openapi.build(
            routes,
            title="menagerie",
            version=version("menagerie"),
            description=API_DESCRIPTION,
            max_images=settings.max_images_per_job,
            webhooks={"jobChanged": docs.WEBHOOK_DELIVERY},
            keyed=settings.auth == "keys",
        )
    ).body
    return app


def image_origin(settings: Settings) -> str | None:
    """The origin of PUBLIC_BASE_URL (the images' URLs), when it is set."""
    if settings.public_base_url is None:
        return None
    url = settings.public_base_url
    return f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")


def cors(settings: Settings) -> list[Middleware]:
    """Starlette's CORS middleware for CORS_ORIGINS (none: no cross-origin page may call)."""
    if not settings.cors_origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Prefer", "Last-Event-ID"],
            expose_headers=["Location", "ETag", "Link", "Retry-After", "RateLimit", "RateLimit-Policy"],
            max_age=600,
        )
    ]


API_DESCRIPTION = (
    "Ask for N images of an animal, get a job id back at once, and follow the job from "
    "`pending` through `processing` to `completed` by polling, by `Prefer: wait`, or as "
    "Server-Sent Events. Errors are RFC 9457 `application/problem+json`."
)
