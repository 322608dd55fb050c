"""Settings: the only place that reads the environment (and `.env`).

Entry points call `load()` once and pass the frozen result down.
"""

from __future__ import annotations

import sys
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PositiveSeconds = Annotated[float, Field(gt=0)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, case_sensitive=False
    )

    database_url: str | None = None
    """`postgresql://…`; unset means an embedded PostgreSQL under `data_dir`."""
    data_dir: str = ".data"
    auto_migrate: bool = True

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    public_base_url: AnyHttpUrl | None = None
    max_images_per_job: int = Field(10, ge=1, le=100)
    max_pending_jobs: int = Field(10_000, ge=1)
    idempotency_ttl: PositiveSeconds = 86_400.0
    sse_heartbeat: PositiveSeconds = 15.0
    db_pool_size: int = Field(10, ge=1, le=200)
    insert_batch_max: int = Field(500, ge=1, le=5_000)
    """At most this many concurrent POSTs share one INSERT (and one commit and one NOTIFY);
    1 inserts every job on its own."""

    image_provider_delay: float = Field(2.0, ge=0)
    image_size: int = Field(512, ge=64, le=2048)

    worker_concurrency: int = Field(4, ge=1, le=1000)
    worker_metrics_port: int | None = Field(None, ge=1, le=65535)
    worker_poll_interval: PositiveSeconds = 30.0
    lease_seconds: PositiveSeconds = 30.0
    job_max_attempts: int = Field(3, ge=1, le=100)
    job_timeout: PositiveSeconds = 300.0
    shutdown_grace: float = Field(25.0, ge=0)
    retry_base_delay: float = Field(1.0, ge=0)
    retry_max_delay: float = Field(60.0, ge=0)

    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    """`json`: one JSON object per line, for a log shipper."""
    debugpy_port: int | None = Field(None, ge=1, le=65535)
    """Listen for a debugger (VS Code "Attach") on this port; needs `pip install debugpy`."""

    retention_days: int = Field(7, ge=0)
    """Finished jobs and their images are deleted this many days after they finished; 0 keeps
    them forever."""
    retention_batch_size: int = Field(500, ge=1, le=10_000)

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        for prefix in ("postgresql+asyncpg://", "postgres+asyncpg://"):
            if value.startswith(prefix):
                value = "postgresql://" + value.removeprefix(prefix)
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// (or postgresql+asyncpg://)")
        return value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lowercase_format(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return level


def load(**overrides: object) -> Settings:
    """Read settings; on a bad value print one line naming the variable and exit 2."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]).upper() if error["loc"] else "settings"
        message = error["msg"].removeprefix("Value error, ")
        print(f"menagerie: bad setting {name}={error.get('input')!r}: {message}", file=sys.stderr)
        raise SystemExit(2) from None
