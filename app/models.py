"""Pydantic models: the request body, the job row, and the job as clients see it."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
)

from app.animals import ANIMALS

Timestamp = Annotated[datetime, PlainSerializer(lambda value: value.isoformat(), return_type=str)]


class JobStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED})
"""A job never leaves these."""


class GenerationRequest(BaseModel):
    """Body of `POST /generations`. Strict: `"3"`, `3.5`, `true` and `null` are not counts.

    Validate with `context={"max_images": N}` to apply the configured maximum.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    num_images: int = Field(alias="numImages", ge=1)
    animal: str | None = None

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
            raise ValueError(f"unknown animal {value!r}; GET /animals lists the catalogue")
        return value


class Job(BaseModel):
    """A row of `jobs`, plus the indexes of its stored images."""

    id: UUID
    status: JobStatus
    num_images: int
    animal: str
    error: str | None
    attempts: int
    max_attempts: int
    run_at: datetime
    worker_id: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    image_indexes: list[int] = []

    @classmethod
    def from_record(cls, record: Any) -> Job:
        return cls.model_validate(dict(record))


class JobOut(BaseModel):
    """The job object of API.md."""

    model_config = ConfigDict(serialize_by_alias=True)

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

    @classmethod
    def from_job(cls, job: Job, *, base_url: str) -> JobOut:
        return cls(
            job_id=job.id,
            status=job.status,
            num_images=job.num_images,
            animal=job.animal,
            image_urls=[f"{base_url}/images/{job.id}/{index}.png" for index in job.image_indexes],
            created_at=job.created_at,
            updated_at=job.updated_at,
            error=job.error,
            attempts=job.attempts,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )
