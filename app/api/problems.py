"""Errors as RFC 9457 problem+json, and the handlers that turn every failure into one."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from app import db
from app.api import request_ids

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"

TITLES = {
    "/problems/validation-error": "Request did not validate",
    "/problems/invalid-json": "Body is not a JSON object",
    "/problems/queue-full": "Too much work queued",
    "/problems/store-unavailable": "Image store unavailable",
    "/problems/idempotency-key-reused": "Idempotency-Key reused",
    "/problems/job-finished": "Job already finished",
    "/problems/unauthorized": "API key missing or not valid",
    "/problems/rate-limited": "Too many requests for this key",
    "/problems/too-many-pending": "Too many pending jobs for this key",
    "/problems/admin-only": "Only an admin key may do this",
}
"""Every problem type this service answers besides `about:blank`, with its title."""


def problem_title(problem_type: str, status: int) -> str:
    return TITLES.get(problem_type) or HTTPStatus(status).phrase


class Problem(Exception):
    """An error answered as problem+json."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type: str = "about:blank",
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type
        self.title = problem_title(type, status)
        self.errors = errors
        self.headers = dict(headers) if headers else None

    @classmethod
    def invalid(cls, loc: list[str], msg: str) -> Problem:
        """A 422 for one named field."""
        return cls(
            422,
            f"{loc[-1]}: {msg}",
            type="/problems/validation-error",
            errors=[{"loc": loc, "msg": msg}],
        )


def no_such_job() -> Problem:
    """An unknown job, a malformed id, or another client's job: all read the same."""
    return Problem(404, "no such job")


def no_such_image() -> Problem:
    return Problem(404, "no such image")


def store_unavailable(detail: str) -> Problem:
    log.warning("image store unavailable: %s", detail, extra={"action": "store_unavailable"})
    return Problem(
        503,
        f"the image store is unavailable; try again shortly ({detail})",
        type="/problems/store-unavailable",
        headers={"Retry-After": "5"},
    )


def queue_full(limit: int) -> Problem:
    return Problem(
        503,
        f"{limit} or more jobs are waiting; try again later",
        type="/problems/queue-full",
        headers={"Retry-After": "5"},
    )


def too_many_pending(limit: int) -> Problem:
    return Problem(
        429,
        f"this key already has {limit} pending jobs, its limit; try again when some have started",
        type="/problems/too-many-pending",
        headers={"Retry-After": "5"},
    )


def key_reused() -> Problem:
    return Problem(
        422,
        "this Idempotency-Key was already used with a different body",
        type="/problems/idempotency-key-reused",
    )


def job_finished(status: str) -> Problem:
    return Problem(
        409,
        f"the job already {status}; only pending or processing jobs can be canceled",
        type="/problems/job-finished",
    )


def problem_response(problem: Problem) -> JSONResponse:
    body: dict[str, Any] = {
        "type": problem.type,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
    }
    if problem.errors is not None:
        body["errors"] = problem.errors
    request_id = request_ids.current.get()
    if request_id is not None:
        body["requestId"] = request_id
    return JSONResponse(body, status_code=problem.status, headers=problem.headers, media_type=MEDIA_TYPE)


def validation_problem(exc: ValidationError, *, where: str) -> Problem:
    """A 422 naming every field that did not validate, in sentences for people: no "Value
    error," prefix, and the input echoed only in part (a 20 KB field is not sent back twice)."""
    errors: list[dict[str, Any]] = [
        {"loc": [where, *(str(part) for part in error["loc"])], "msg": readable(error["msg"])}
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    loc, message = errors[0]["loc"], errors[0]["msg"]
    detail = message if len(loc) == 1 else f"{field_name(loc[1:])}: {message}"
    return Problem(422, detail, type="/problems/validation-error", errors=errors)


def field_name(loc: list[str]) -> str:
    """The field a location names, as a client spells it: `webhookEvents[1]` for an item."""
    name, items = "", ""
    for part in loc:
        if part.isdigit():
            items += f"[{part}]"
        else:
            name, items = part, ""
    return name + items


MAX_ECHO = 60
"""Characters of a client's input a problem repeats at most."""


def readable(message: str) -> str:
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return message if len(message) <= 200 else message[:200] + "…"


def echo(value: str) -> str:
    """A client's input quoted in a message, cut to MAX_ECHO characters."""
    shown = value if len(value) <= MAX_ECHO else value[:MAX_ECHO] + "…"
    return repr(shown)


async def on_problem(request: Request, exc: Problem) -> Response:
    return problem_response(exc)


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette's own 405 names only one route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


async def on_http_exception(request: Request, exc: HTTPException) -> Response:
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


def exception_handlers() -> dict[Any, Any]:
    return {
        Problem: on_problem,
        HTTPException: on_http_exception,
        db.Unavailable: on_database_unavailable,
        Exception: on_unexpected,
    }
