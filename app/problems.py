"""Errors as RFC 9457 problem+json, and the handlers that turn every failure into one."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from app import db, request_ids
from app.models import problem_title

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    """An error answered as problem+json."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type: str = "about:blank",
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type
        self.title = problem_title(type, status)
        self.errors = errors
        self.headers = headers

    @classmethod
    def invalid(cls, loc: list[str], msg: str) -> Problem:
        """A 422 for one named field."""
        return cls(
            422,
            f"{loc[-1]}: {msg}",
            type="/problems/validation-error",
            errors=[{"loc": loc, "msg": msg}],
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
    errors = [
        {"loc": [where, *(str(part) for part in error["loc"])], "msg": error["msg"]}
        for error in exc.errors(include_url=False)
    ]
    first = errors[0]
    detail = first["msg"] if len(first["loc"]) == 1 else f"{first['loc'][-1]}: {first['msg']}"
    return Problem(422, detail, type="/problems/validation-error", errors=errors)


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


def exception_handlers() -> dict[Any, Any]:
    handlers: dict[Any, Any] = {
        Problem: on_problem,
        HTTPException: on_http_exception,
        Exception: on_unexpected,
    }
    for error in db.UNAVAILABLE_ERRORS:
        handlers[error] = on_database_unavailable
    return handlers
