"""Pydantic models: the request body, the query, the job as clients see it, problems."""

from __future__ import annotations

import json as _json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
)

from app.api.problems import echo
from app.images.animals import ANIMALS
from app.images.generations import Generation, Moment
from app.images.stores import EXTENSIONS
from app.queue.kinds import Status as JobStatus
from app.queue.overview import Overview
from app.webhooks.guard import MAX_URL_LENGTH, check_url

Timestamp = Annotated[datetime, PlainSerializer(lambda value: value.isoformat(), return_type=str)]


MAX_BODY_BYTES = 64 * 1024
"""The largest request body accepted."""
MAX_WAIT_SECONDS = 60
"""The longest `Prefer: wait=N` honoured."""
MAX_IDEMPOTENCY_KEY = 255
"""The longest Idempotency-Key accepted (and the shortest is one character)."""


WebhookEvent = Literal["start", "image", "completed"]
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("start", "image", "completed")
DEFAULT_WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("completed",)


class GenerationRequest(BaseModel):
    """Body of `POST /generations`. Strict: `"3"`, `3.5`, `true` and `null` are not counts."""

    # Validate with context={"max_images": N, "webhooks": WebhookPolicy(...)} to apply the
    # configured maximum and what this server allows of webhooks.

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"numImages": 3}]})

    num_images: int = Field(alias="numImages", ge=1, description="How many images, 1 to MAX_IMAGES_PER_JOB")
    animal: str | None = Field(
        None,
        description="One of GET /animals; chosen at random when absent",
        json_schema_extra={"enum": [*ANIMALS, None]},
    )

    webhook: str | None = Field(
        None,
        description=(
            "An absolute https URL to POST the job to when it changes (see webhookEvents), "
            f"signed per Standard Webhooks; at most {MAX_URL_LENGTH} characters, not a private address"
        ),
        json_schema_extra={"format": "uri", "maxLength": MAX_URL_LENGTH},
    )
    webhook_events: list[WebhookEvent] | None = Field(
        None,
        alias="webhookEvents",
        min_length=1,
        description=(
            "Which changes are delivered to `webhook`: `start` (the first time a worker takes the "
            "job), `image` (each image stored), `completed` (the job ended: completed, failed or "
            'canceled). Default `["completed"]`'
        ),
    )

    @field_validator("webhook")
    @classmethod
    def _webhook_allowed(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        policy: WebhookPolicy = (info.context or {}).get("webhooks") or WebhookPolicy()
        if policy.unavailable:
            raise ValueError(policy.unavailable)
        return check_url(value, allow_private=policy.allow_private)

    @field_validator("webhook_events")
    @classmethod
    def _events_need_webhook(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is not None and "webhook" in info.data and info.data["webhook"] is None:
            raise ValueError("webhookEvents needs a webhook")
        return None if value is None else list(dict.fromkeys(value))

    @field_validator("num_images")
    @classmethod
    def _at_most_max(cls, value: int, info: ValidationInfo) -> int:
        maximum = (info.context or {}).get("max_images")
        if maximum is not None and value > maximum:
            raise ValueError(f"Input should be less than or equal to {maximum}")
        return value

    @field_validator("animal")
    @classmethod
    def _known_animal(cls, value: str | None) -> str | None:
        if value is not None and value not in ANIMALS:
            raise ValueError(f"unknown animal {echo(value)}; GET /animals lists the catalogue")
        return value


@dataclass(frozen=True)
class WebhookPolicy:
    """What a server allows of webhooks: `unavailable` says why none can be accepted (None:
    they can), `allow_private` lets them name private addresses and plain http."""

    unavailable: str | None = "this server does not accept webhooks"
    allow_private: bool = False


class ListQuery(BaseModel):
    """The query of GET /generations."""

    model_config = ConfigDict(extra="ignore")

    limit: int = Field(50, ge=1, le=500)
    status: JobStatus | None = None
    cursor: str | None = None


EXAMPLE_JOB: dict[str, Any] = {
    "jobId": "6f1c0d0e-3b0a-4c5e-9a43-1d2b8f0c7a11",
    "status": "completed",
    "numImages": 2,
    "animal": "bear",
    "imageUrls": [
        "http://localhost:8000/images/6f1c0d0e-3b0a-4c5e-9a43-1d2b8f0c7a11/0.png",
        "http://localhost:8000/images/6f1c0d0e-3b0a-4c5e-9a43-1d2b8f0c7a11/1.png",
    ],
    "createdAt": "2026-11-27T10:30:00.123456+00:00",
    "updatedAt": "2026-11-27T10:30:04.456789+00:00",
    "error": None,
    "attempts": 1,
    "startedAt": "2026-11-27T10:30:00.125002+00:00",
    "finishedAt": "2026-11-27T10:30:04.456789+00:00",
    "prompt": "a cute bear",
    "provider": "openai",
    "model": "gpt-image-1",
    "webhook": "https://example.com/hooks/menagerie",
    "webhookEvents": ["completed"],
}


class JobOut(BaseModel):
    """A generation job. `imageUrls` lists the images finished so far; exactly `numImages`
    once `completed`. `completed`, `failed` and `canceled` are terminal."""

    model_config = ConfigDict(serialize_by_alias=True, json_schema_extra={"examples": [EXAMPLE_JOB]})

    job_id: UUID = Field(serialization_alias="jobId")
    status: JobStatus
    num_images: int = Field(serialization_alias="numImages")
    animal: str
    image_urls: list[str] = Field(serialization_alias="imageUrls")
    created_at: Timestamp = Field(serialization_alias="createdAt")
    updated_at: Timestamp = Field(serialization_alias="updatedAt")
    error: str | None
    attempts: int
    started_at: Timestamp | None = Field(serialization_alias="startedAt")
    finished_at: Timestamp | None = Field(serialization_alias="finishedAt")
    prompt: str | None = Field(
        description="The text sent to the model (null for jobs made before providers existed)"
    )
    provider: str = Field(
        description="What makes its images: `local`, `openai` or `openrouter`, fixed at creation"
    )
    model: str | None = Field(
        description="The model asked for, fixed at creation; null for the local renderer"
    )
    webhook: str | None = Field(description="The URL its changes are POSTed to; null when none")
    webhook_events: list[WebhookEvent] | None = Field(
        serialization_alias="webhookEvents", description="The changes delivered to `webhook`; null when none"
    )


class WebhookDeliveryOut(JobOut):
    """What a webhook delivery POSTs: the job as it was right after the change, plus which
    change it was and its number within the job."""

    event: WebhookEvent = Field(
        description="start (first claim), image (an image stored), completed (the job ended, in any status)"
    )
    sequence: int = Field(description="1, 2, 3… per job, in the order of the changes: order deliveries by it")


EXAMPLE_DELIVERY: dict[str, Any] = {"event": "completed", "sequence": 4, **EXAMPLE_JOB}


Signer = Callable[[str], str]
"""The query string (`?expires=…&sig=…`) that lets a browser GET an image path without a key."""


def job_json(job: Generation, *, base_url: str, signer: Signer | None = None) -> bytes:
    """The job as JobOut's JSON, written directly rather than through the model: this is the
    GET, POST and event-stream hot path, where building a JobOut (pydantic's model_construct)
    cost as much as the rest of the request. tests/test_api.py holds it to JobOut's schema for
    every status. With a `signer`, image URLs carry its signature."""
    paths = [
        f"/images/{job.id}/{index}.{EXTENSIONS[content_type]}"
        for index, content_type in zip(job.image_indexes, job.image_types, strict=True)
    ]
    if signer is None:
        image_urls = [f"{base_url}{path}" for path in paths]
    else:
        image_urls = [f"{base_url}{path}{signer(path)}" for path in paths]
    return orjson.dumps(  # datetimes as isoformat() writes them, text as UTF-8
        {
            "jobId": str(job.id),
            "status": job.status.value,
            "numImages": job.num_images,
            "animal": job.animal,
            "imageUrls": image_urls,
            "createdAt": job.created_at,
            "updatedAt": job.updated_at,
            "error": job.error,
            "attempts": job.attempts,
            "startedAt": job.started_at,
            "finishedAt": job.finished_at,
            "prompt": job.prompt,
            "provider": job.provider,
            "model": job.model,
            "webhook": job.webhook,
            "webhookEvents": job.webhook_events,
        }
    )


def jobs_json(jobs: Iterable[Generation], *, base_url: str, signer: Signer | None = None) -> bytes:
    """A JSON array of jobs, each as `job_json` writes it."""
    return b"[" + b",".join(job_json(job, base_url=base_url, signer=signer) for job in jobs) + b"]"


class WebhookAttemptOut(BaseModel):
    """One attempt to deliver a webhook."""

    model_config = ConfigDict(serialize_by_alias=True)

    webhook_id: str = Field(
        serialization_alias="webhookId",
        description="The delivery's webhook-id header (the same on each retry)",
    )
    event: WebhookEvent
    sequence: int = Field(description="The delivery's number within the job: 1, 2, 3…")
    attempt: int = Field(description="Which attempt of this delivery: 1, 2, …")
    at: Timestamp = Field(description="When the attempt started")
    outcome: Literal["delivered", "retrying", "gone", "refused", "failed"] = Field(
        description=(
            "delivered (2xx), retrying (tried again later), gone (410: never again), refused (the "
            "address is not public), failed (attempts used up)"
        )
    )
    status_code: int | None = Field(
        serialization_alias="statusCode", description="The receiver's HTTP status; null when none came"
    )
    error: str | None = Field(description="Why it did not succeed; null when delivered")
    latency_ms: float | None = Field(
        serialization_alias="latencyMs", description="From sending to the receiver's status (or the failure)"
    )


def webhook_attempts_json(rows: Iterable[Any]) -> bytes:
    """Attempts (webhook_attempt_list rows) as a JSON array of WebhookAttemptOut."""
    return _json.dumps(
        [
            {
                "webhookId": f"msg_{row['delivery_id'].hex}",
                "event": row["event"],
                "sequence": row["sequence"],
                "attempt": row["attempt"],
                "at": row["at"].isoformat(),
                "outcome": row["outcome"],
                "statusCode": row["status_code"],
                "error": row["error"],
                "latencyMs": None if row["latency_ms"] is None else round(row["latency_ms"], 3),
            }
            for row in rows
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


class MomentOut(BaseModel):
    """One recorded change of a job."""

    type: str = Field(
        description="created, started, progress, retrying, requeued, completed, failed or canceled"
    )
    status: JobStatus = Field(description="The job's status after it")
    data: dict[str, Any] | None = Field(
        description="What the change adds: `attempt` (started), `image` (progress, counted from 0), `error` (retrying, failed)"
    )
    at: Timestamp


def history_json(moments: Iterable[Moment]) -> bytes:
    """A job's history as a JSON array of MomentOut."""
    return _json.dumps(
        [
            {"type": moment.type, "status": moment.status, "data": moment.data, "at": moment.at.isoformat()}
            for moment in moments
        ],
        separators=(",", ":"),
    ).encode()


class KindLoadOut(BaseModel):
    """One kind of job in the queue now."""

    model_config = ConfigDict(serialize_by_alias=True)

    kind: str
    pending: int = Field(description="Jobs waiting (due or not)")
    processing: int = Field(description="Jobs running on a worker")
    due: int = Field(description="Waiting jobs whose run time has come")
    longest_wait_seconds: float | None = Field(
        serialization_alias="longestWaitSeconds",
        description="How long the oldest due job has waited since it fell due; null when none is due",
    )


class WorkerOut(BaseModel):
    """A worker heard from in the last 90 seconds."""

    model_config = ConfigDict(serialize_by_alias=True)

    id: str
    host: str
    pid: int
    kinds: list[str]
    running: int = Field(description="Jobs it ran at its last heartbeat")
    concurrency: int = Field(description="Jobs it runs at once at most")
    started_at: Timestamp = Field(serialization_alias="startedAt")
    last_seen_at: Timestamp = Field(serialization_alias="lastSeenAt")
    seconds_since_heartbeat: float = Field(serialization_alias="secondsSinceHeartbeat")
    processing_jobs: int = Field(serialization_alias="processingJobs", description="Jobs it holds now")


class FailuresOut(BaseModel):
    failed: int = Field(description="Jobs that failed for good in the last hour")
    retrying: int = Field(
        description="Jobs whose last attempt failed in the last hour and that will be retried"
    )


class QueueOut(BaseModel):
    """The queue at a glance: each kind's load, the live workers, the last hour's failures."""

    model_config = ConfigDict(serialize_by_alias=True)

    kinds: list[KindLoadOut]
    workers: list[WorkerOut]
    failures_last_hour: FailuresOut = Field(serialization_alias="failuresLastHour")


EXAMPLE_QUEUE: dict[str, Any] = {
    "kinds": [{"kind": "generate", "pending": 12, "processing": 4, "due": 12, "longestWaitSeconds": 1.2}],
    "workers": [
        {
            "id": "w-host-1234-9f1c",
            "host": "host",
            "pid": 1234,
            "kinds": ["generate"],
            "running": 4,
            "concurrency": 4,
            "startedAt": "2026-11-27T10:00:00.000000+00:00",
            "lastSeenAt": "2026-11-27T10:30:00.000000+00:00",
            "secondsSinceHeartbeat": 3.4,
            "processingJobs": 4,
        }
    ],
    "failuresLastHour": {"failed": 1, "retrying": 2},
}


def queue_json(overview: Overview) -> bytes:
    """The queue overview as QueueOut's JSON."""
    out = QueueOut(
        kinds=[KindLoadOut.model_validate(kind, from_attributes=True) for kind in overview.kinds],
        workers=[WorkerOut.model_validate(worker, from_attributes=True) for worker in overview.workers],
        failures_last_hour=FailuresOut(
            failed=overview.failed_last_hour, retrying=overview.retrying_last_hour
        ),
    )
    return out.model_dump_json().encode()


class ProblemError(BaseModel):
    loc: list[str]
    msg: str


class ProblemOut(BaseModel):
    """An error, as RFC 9457 application/problem+json."""

    model_config = ConfigDict(serialize_by_alias=True)

    type: str = Field(description="`about:blank` or one of /problems/…", examples=["about:blank"])
    title: str
    status: int
    detail: str
    errors: list[ProblemError] | None = Field(None, description="Validation failures (422)")
    request_id: str | None = Field(
        None, serialization_alias="requestId", description="The request's X-Request-ID"
    )
