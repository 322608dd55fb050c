"""The OpenAPI 3.1 document, generated from the routes and the pydantic models.

Each endpoint carries an `Operation` (attached with `@documented(...)` beside its code); the
document is built by walking the app's routes, so a route without documentation, or
documentation without a route, cannot happen silently. Schemas come from the models
themselves (`model_json_schema`), never from a hand-kept copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute, Route

from app.api.models import (
    GenerationRequest,
    JobOut,
    MomentOut,
    ProblemOut,
    QueueOut,
    WebhookAttemptOut,
    WebhookDeliveryOut,
)
from app.api.problems import problem_title

F = TypeVar("F", bound=Callable[..., Any])
REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Param:
    """A parameter. Optional headers and the cursor carry no example: Swagger UI's "Try it
    out" fills the example in, and a sample Idempotency-Key, Prefer or cursor would change
    what the request does."""

    name: str
    where: Literal["path", "query", "header"]
    description: str
    schema: dict[str, Any]
    example: Any = None
    required: bool = False


@dataclass(frozen=True)
class Header:
    description: str
    example: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Reply:
    """One response: a JSON body of `model` (or `many` of them), a problem of one of
    `problems` (type -> example detail), or raw `content` (media type -> schema)."""

    description: str
    model: type[BaseModel] | None = None
    many: bool = False
    problems: dict[str, str] = field(default_factory=dict)
    content: dict[str, dict[str, Any]] = field(default_factory=dict)
    example: Any = None
    headers: dict[str, Header] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    summary: str
    description: str
    replies: dict[int, Reply]
    tag: str = "generations"
    params: tuple[Param, ...] = ()
    body: type[BaseModel] | None = None
    body_examples: dict[str, Any] = field(default_factory=dict)
    public: bool = False
    """Answers without an API key (health, readiness, metrics)."""
    signed: bool = False
    """Answers a signed URL (its `expires` and `sig` query parameters, checked by the endpoint:
    a wrong one is a 404, not a 401) as well as an API key (images)."""


def documented(operation: Operation) -> Callable[[F], F]:
    """Attach `operation` to an endpoint function."""

    def attach(endpoint: F) -> F:
        endpoint.openapi = operation  # type: ignore[attr-defined]
        return endpoint

    return attach


def _problem_reply(status: int, reply: Reply) -> dict[str, Any]:
    examples = {
        problem_type.rsplit("/", 1)[-1].replace(":", "-"): {
            "value": {
                "type": problem_type,
                "title": problem_title(problem_type, status),
                "status": status,
                "detail": detail,
                "requestId": "4bf92f3577b34da6a3ce929d0e0e4736",
                **({"errors": [{"loc": ["body", "numImages"], "msg": detail}]} if status == 422 else {}),
            }
        }
        for problem_type, detail in reply.problems.items()
    }
    return {
        "application/problem+json": {"schema": {"$ref": REF.format(model="ProblemOut")}, "examples": examples}
    }


def _reply(status: int, reply: Reply) -> dict[str, Any]:
    rendered: dict[str, Any] = {"description": reply.description}
    if reply.problems:
        rendered["content"] = _problem_reply(status, reply)
    elif reply.model is not None:
        schema: dict[str, Any] = {"$ref": REF.format(model=reply.model.__name__)}
        if reply.many:
            schema = {"type": "array", "items": schema}
        rendered["content"] = {"application/json": {"schema": schema, "example": reply.example}}
    elif reply.content:
        rendered["content"] = {
            media: {"schema": schema, **({"example": reply.example} if reply.example is not None else {})}
            for media, schema in reply.content.items()
        }
    if reply.headers:
        rendered["headers"] = {
            name: {"description": header.description, "schema": header.schema, "example": header.example}
            for name, header in reply.headers.items()
        }
    return rendered


KEY_HEADERS = {
    "RateLimit-Policy": Header("The key's limit: q requests per w seconds", '"key";q=10;w=1'),
    "RateLimit": Header("What is left of it: r requests, full again in t seconds", '"key";r=0;t=2'),
}
UNAUTHORIZED = Reply(
    "The API key is missing, malformed, unknown or revoked (the same answer for each)",
    problems={"/problems/unauthorized": "send a valid API key: Authorization: Bearer mng_…"},
    headers={"WWW-Authenticate": Header("How to authenticate", 'Bearer realm="menagerie"')},
)
RATE_LIMITED = Reply(
    "The key is over its request rate",
    problems={
        "/problems/rate-limited": "this key may make 10 requests per second (bursts of 20); retry in 1 s"
    },
    headers={
        "Retry-After": Header("Seconds to wait", "1", {"type": "string", "pattern": "^[0-9]+$"}),
        **KEY_HEADERS,
    },
)
SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`mng_…`) made with `menagerie keys create NAME`",
    },
}


def _keyed(op: Operation) -> Operation:
    """`op` with the answers every keyed operation may give: 401, and 429 (merged with the
    operation's own 429, such as too many pending jobs)."""
    replies = dict(op.replies)
    replies[401] = UNAUTHORIZED
    own = replies.get(429)
    replies[429] = (
        RATE_LIMITED
        if own is None
        else Reply(
            f"{RATE_LIMITED.description}, or: {own.description}",
            problems={**RATE_LIMITED.problems, **own.problems},
            headers={**RATE_LIMITED.headers, **own.headers},
        )
    )
    return Operation(**{**op.__dict__, "replies": replies})


def _operation(op: Operation, operation_id: str, *, keyed: bool) -> dict[str, Any]:
    if keyed and not op.public:
        op = _keyed(op)
    rendered: dict[str, Any] = {
        "operationId": operation_id,
        "summary": op.summary,
        "description": op.description,
        "tags": [op.tag],
        "responses": {str(status): _reply(status, reply) for status, reply in sorted(op.replies.items())},
    }
    if keyed and op.public:
        rendered["security"] = []
    if keyed and op.signed:
        rendered["security"] = [{"bearer": []}, {}]
    if op.params:
        rendered["parameters"] = [
            {
                "name": param.name,
                "in": param.where,
                "required": param.required or param.where == "path",
                "description": param.description,
                "schema": param.schema,
                **({"example": param.example} if param.example is not None else {}),
            }
            for param in op.params
        ]
    if op.body is not None:
        rendered["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": REF.format(model=op.body.__name__)},
                    "examples": {name: {"value": value} for name, value in op.body_examples.items()},
                }
            },
        }
    return rendered


def _schemas(
    models: Iterable[tuple[type[BaseModel], Literal["validation", "serialization"]]],
) -> dict[str, Any]:
    _, top = models_json_schema(list(models), ref_template=REF)
    defs: dict[str, Any] = top.get("$defs", {})
    return defs


def build(
    routes: Iterable[BaseRoute],
    *,
    title: str,
    version: str,
    description: str,
    max_images: int,
    webhooks: dict[str, Operation] | None = None,
    keyed: bool = False,
) -> dict[str, Any]:
    """The document for `routes`, and `webhooks`: requests this service makes (OpenAPI 3.1's
    top-level webhooks), by name; `keyed` (AUTH=keys): with the bearer scheme, required by
    every operation but the public ones, and their 401 and 429 answers."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route) or route.methods is None:
            continue
        op: Operation | None = getattr(route.endpoint, "openapi", None)
        if op is None:
            continue
        for method in sorted(route.methods - {"HEAD"}):
            paths.setdefault(route.path, {})[method.lower()] = _operation(
                op, route.endpoint.__name__, keyed=keyed
            )
    schemas = _schemas(
        [
            (GenerationRequest, "validation"),
            (JobOut, "serialization"),
            (ProblemOut, "serialization"),
            (WebhookAttemptOut, "serialization"),
            (WebhookDeliveryOut, "serialization"),
            (QueueOut, "serialization"),
            (MomentOut, "serialization"),
        ]
    )
    schemas["GenerationRequest"]["properties"]["numImages"]["maximum"] = max_images
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "webhooks": {
            name: {"post": _operation(op, name, keyed=keyed)} for name, op in (webhooks or {}).items()
        },
        "components": {"schemas": schemas},
    }
    if keyed:
        document["components"]["securitySchemes"] = SECURITY_SCHEMES
        document["security"] = [{"bearer": []}]
    return document
