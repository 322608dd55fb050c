"""The HTTP API: endpoints, problem+json errors, and the app factory with its lifespan."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, TypedDict
from uuid import UUID

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from app import db, images, jobs
from app.animals import ANIMALS
from app.migrate import migration_ids
from app.models import GenerationRequest, JobOut, JobStatus
from app.settings import Settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
JSON_TYPES = ("application/json",)
_job_list = TypeAdapter(list[JobOut])


class State(TypedDict):
    settings: Settings
    pool: asyncpg.Pool
    migration_ids: list[str]


class Problem(Exception):
    """An error answered as RFC 9457 problem+json."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type: str = "about:blank",
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type
        self.title = title or HTTPStatus(status).phrase
        self.errors = errors
        self.headers = headers


def problem_response(problem: Problem) -> JSONResponse:
    body: dict[str, Any] = {
        "type": problem.type,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
    }
    if problem.errors is not None:
        body["errors"] = problem.errors
    return JSONResponse(
        body,
        status_code=problem.status,
        headers=problem.headers,
        media_type="application/problem+json",
    )


def validation_problem(exc: ValidationError, *, where: str) -> Problem:
    errors = [
        {"loc": [where, *(str(part) for part in error["loc"])], "msg": error["msg"]}
        for error in exc.errors(include_url=False)
    ]
    first = errors[0]
    return Problem(
        422,
        f"{first['loc'][-1]}: {first['msg']}" if len(first["loc"]) > 1 else first["msg"],
        type="/problems/validation-error",
        title="Request did not validate",
        errors=errors,
    )


# Requests


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or a Problem: 415 not JSON, 413 too big, 400 malformed."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in JSON_TYPES and not media_type.endswith("+json"):
        raise Problem(415, "send the body as application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise Problem(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise Problem(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise Problem(400, f"the body is not valid JSON: {exc}", type="/problems/invalid-json") from exc
    if not isinstance(data, dict):
        raise Problem(400, "the body must be a JSON object", type="/problems/invalid-json")
    return data


def parse_job_id(request: Request) -> UUID:
    try:
        return UUID(request.path_params["job_id"])
    except ValueError:
        raise Problem(404, "no such job") from None


def base_url(request: Request) -> str:
    configured = request.state.settings.public_base_url
    return str(configured or request.base_url).rstrip("/")


def job_response(job: JobOut, *, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        job.model_dump_json(), status_code=status_code, headers=headers, media_type="application/json"
    )


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    limit: int = Field(50, ge=1, le=500)
    status: JobStatus | None = None
    cursor: str | None = None


def encode_cursor(created_at: datetime, job_id: UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(job_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, job_id = json.loads(raw)
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None:
            raise ValueError("naive timestamp")
        return moment.astimezone(UTC), UUID(job_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, OverflowError):
        raise Problem(
            422,
            "cursor: not a cursor this service issued",
            type="/problems/validation-error",
            title="Request did not validate",
            errors=[{"loc": ["query", "cursor"], "msg": "not a cursor this service issued"}],
        ) from None


# Endpoints


async def create_generation(request: Request) -> Response:
    settings: Settings = request.state.settings
    data = await read_json_object(request)
    try:
        wanted = GenerationRequest.model_validate(
            data, context={"max_images": settings.max_images_per_job}
        )
    except ValidationError as exc:
        raise validation_problem(exc, where="body") from None
    animal = wanted.animal or random.choice(ANIMALS)
    job = await jobs.create(
        request.state.pool,
        num_images=wanted.num_images,
        animal=animal,
        max_attempts=settings.job_max_attempts,
    )
    log.info("created job %s", job.id, extra={"action": "job_created", "job_id": str(job.id)})
    return job_response(
        JobOut.from_job(job, base_url=base_url(request)),
        status_code=202,
        headers={"Location": f"/generations/{job.id}"},
    )


async def get_generation(request: Request) -> Response:
    job = await jobs.get(request.state.pool, job_id=parse_job_id(request))
    if job is None:
        raise Problem(404, "no such job")
    return job_response(JobOut.from_job(job, base_url=base_url(request)))


async def list_generations(request: Request) -> Response:
    try:
        query = ListQuery.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise validation_problem(exc, where="query") from None
    after = decode_cursor(query.cursor) if query.cursor else None
    page = await jobs.list_page(
        request.state.pool, status=query.status, after=after, limit=query.limit + 1
    )
    headers = {}
    if len(page) > query.limit:
        page = page[: query.limit]
        last = page[-1]
        next_url = request.url.include_query_params(cursor=encode_cursor(last.created_at, last.id))
        if request.state.settings.public_base_url:
            next_url = f"{base_url(request)}{next_url.path}?{next_url.query}"
        headers["Link"] = f'<{next_url}>; rel="next"'
    root = base_url(request)
    body = _job_list.dump_json([JobOut.from_job(job, base_url=root) for job in page], by_alias=True)
    return Response(body, headers=headers, media_type="application/json")


async def get_image(request: Request) -> Response:
    job_id = parse_job_id(request)
    name: str = request.path_params["name"]
    stem, _, extension = name.partition(".")
    canonical = stem.isascii() and stem.isdigit() and len(stem) <= 6 and str(int(stem)) == stem
    if extension != "png" or not canonical:
        raise Problem(404, "no such image")
    found = await images.get(request.state.pool, job_id=job_id, index=int(stem))
    if found is None:
        raise Problem(404, "no such image")
    png, digest = found
    etag = f'"{digest}"'
    headers = {"ETag": etag, "Cache-Control": "public, max-age=31536000, immutable"}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(png, headers=headers, media_type="image/png")


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match compares weakly (RFC 9110 13.1.2): W/"x" matches "x"."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


async def cancel_generation(request: Request) -> Response:
    """Cancel a pending or processing job; repeating it is harmless; a finished job is 409."""
    pool = request.state.pool
    job_id = parse_job_id(request)
    canceled = await jobs.cancel(pool, job_id=job_id)
    job = await jobs.get(pool, job_id=job_id)
    if job is None:
        raise Problem(404, "no such job")
    if canceled:
        log.info("canceled job %s", job.id, extra={"action": "job_canceled", "job_id": str(job.id)})
    elif job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
        raise Problem(
            409,
            f"the job already {job.status.value}; only pending or processing jobs can be canceled",
            type="/problems/job-finished",
            title="Job already finished",
        )
    return job_response(JobOut.from_job(job, base_url=base_url(request)))


async def list_animals(request: Request) -> Response:
    return JSONResponse(list(ANIMALS))


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    try:
        async with request.state.pool.acquire(timeout=2) as conn:
            migrated = await db.schema_is_migrated(conn, migration_ids=request.state.migration_ids)
    except (*db.UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
        raise Problem(503, f"the database does not answer: {exc}", headers={"Retry-After": "1"}) from None
    if not migrated:
        raise Problem(503, "the database schema is not migrated", headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready"})


# Errors


async def on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc)


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette's own 405 names only one route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = {404: "no such resource", 405: f"{request.method} is not allowed here"}.get(
        exc.status_code, str(exc.detail)
    )
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(exc.headers or {}), "Allow": allowed_methods(request)}
    return problem_response(Problem(exc.status_code, detail, headers=headers))


async def on_database_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("database unavailable: %s", exc, extra={"action": "database_unavailable"})
    return problem_response(
        Problem(503, "the database is unavailable; try again shortly", headers={"Retry-After": "1"})
    )


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error", extra={"action": "request_crashed"})
    return problem_response(Problem(500, "an unexpected error occurred"))


def create_app(settings: Settings) -> Starlette:
    assert settings.database_url, "resolve the database URL before building the app"

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        pool = await db.create_pool(settings.database_url, size=settings.db_pool_size)
        try:
            yield {"settings": settings, "pool": pool, "migration_ids": migration_ids()}
        finally:
            await pool.close()

    routes = [
        Route("/generations", create_generation, methods=["POST"]),
        Route("/generations", list_generations, methods=["GET"]),
        Route("/generations/{job_id}", get_generation, methods=["GET"]),
        Route("/generations/{job_id}/cancel", cancel_generation, methods=["POST"]),
        Route("/images/{job_id}/{name}", get_image, methods=["GET"]),
        Route("/animals", list_animals, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    handlers: dict[Any, Any] = {
        Problem: on_problem,
        HTTPException: on_http_exception,
        Exception: on_unexpected,
    }
    for error in db.UNAVAILABLE_ERRORS:
        handlers[error] = on_database_unavailable
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
