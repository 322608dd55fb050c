"""Settings: the only place that reads the environment (and `.env`).

Entry points call `load()` once and pass the frozen result down.
"""

from __future__ import annotations

import base64
import binascii
import configparser
import ipaddress
import os
import re
import string
import sys
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NoReturn

from pydantic import (
    AliasChoices,
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PositiveSeconds = Annotated[float, Field(gt=0)]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class SettingError(ValueError):
    """A setting outside what it accepts; the message names it."""

    def __init__(self, name: str, value: object, message: str) -> None:
        super().__init__(f"bad setting {name}={value!r}: {message}")


def parse_duration(text: str) -> float:
    """Seconds in `250ms`, `5s`, `1m`, `1h`, `2d` or a plain number of seconds."""
    found = _DURATION.match(text)
    if found is None:
        raise ValueError(f"{text!r} is not a duration such as 250ms, 5s, 1m, 1h or 2d")
    return float(found.group(1)) * _UNIT_SECONDS[found.group(2)]


Backoff = tuple[Literal["exponential"], float, float] | tuple[Literal["schedule"], tuple[float, ...]]
"""("exponential", base, cap) or ("schedule", (first delay, second, ...))."""


def parse_backoff(text: str) -> Backoff:
    """`1s..60s`: exponential, from 1 s doubling up to 60 s; `5s,1m,10m`: those delays in turn
    (the last one repeats)."""
    if ".." in text:
        base, _, cap = text.partition("..")
        low, high = parse_duration(base), parse_duration(cap)
        if high < low:
            raise ValueError(f"{text!r}: the cap is below the base")
        return ("exponential", low, high)
    return ("schedule", tuple(parse_duration(part) for part in text.split(",")))


@dataclass(frozen=True)
class KindSettings:
    """How workers run one kind of job; None: the kind's own default."""

    slots: int | None = None
    max_attempts: int | None = None
    timeout: float | None = None
    backoff: Backoff | None = None


class Settings(BaseSettings):
    # An empty variable counts as unset: docker-compose.yml passes unset ones through empty.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, case_sensitive=False, env_ignore_empty=True
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

    auth: Literal["keys", "none"] = "keys"
    """`keys`: every API call needs a key (`menagerie keys create`); `none`: anyone who can
    reach the server may do anything, allowed only while HOST is a loopback address."""
    image_url_ttl: PositiveSeconds = 3600.0
    """With AUTH=keys, image URLs are signed and valid this long (and up to half as long again)."""
    image_url_secret: SecretStr | None = None
    """Signs image URLs; unset: a random one made once and kept in the database."""
    stream_token_ttl: PositiveSeconds = 60.0
    """With AUTH=keys, seconds a token from POST /generations/events/token opens the event
    stream (EventSource cannot send a key)."""
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Origins (comma list, or `*`) whose web pages may call the API; none by default."""

    image_provider_delay: float = Field(2.0, ge=0)
    image_size: int = Field(512, ge=64, le=2048)

    image_provider: Literal["local", "openai", "openrouter"] = "local"
    """What makes the images of new generations: the local renderer or an HTTP model."""
    image_model: str | None = None
    """The model asked for; required for HTTP providers (no default: it costs money)."""
    image_prompt_template: str = "a cute {animal}"
    """The text sent to the model; `{animal}` is its only placeholder, and it must be there."""
    max_image_bytes: int = Field(20_000_000, ge=1_000)
    """The largest image accepted from a provider, decoded."""
    image_provider_timeout: PositiveSeconds = 120.0
    """Seconds one provider call (or one image download) may take."""
    provider_max_concurrency: int = Field(4, ge=1, le=1000)
    """Provider calls in flight per worker process, whatever its slots."""
    openai_base_url: AnyHttpUrl = AnyHttpUrl("https://api.openai.com/v1")
    openai_api_key: SecretStr | None = None
    openai_image_size: str = "1024x1024"
    openrouter_base_url: AnyHttpUrl = AnyHttpUrl("https://openrouter.ai/api/v1")
    openrouter_api_key: SecretStr | None = None
    openrouter_modalities: Annotated[list[str], NoDecode] = ["image", "text"]

    worker_kinds: Annotated[list[str] | None, NoDecode] = None
    """The kinds of job this worker runs (comma list); None: every registered kind."""
    worker_concurrency: int = Field(
        4, ge=1, le=1000, validation_alias=AliasChoices("generate_slots", "worker_concurrency")
    )
    """Generations one worker runs at once (GENERATE_SLOTS)."""
    worker_metrics_port: int | None = Field(None, ge=1, le=65535)
    worker_poll_interval: PositiveSeconds = 30.0
    lease_seconds: PositiveSeconds = 30.0
    job_max_attempts: int = Field(
        3, ge=1, le=100, validation_alias=AliasChoices("generate_max_attempts", "job_max_attempts")
    )
    """Attempts a generation gets (GENERATE_MAX_ATTEMPTS)."""
    job_timeout: PositiveSeconds | None = Field(
        None, validation_alias=AliasChoices("generate_timeout", "job_timeout")
    )
    """Seconds one attempt of a generation may run (GENERATE_TIMEOUT); unset: see
    `generation_timeout`."""
    shutdown_grace: float = Field(25.0, ge=0)
    retry_base_delay: float = Field(1.0, ge=0)
    retry_max_delay: float = Field(60.0, ge=0)
    generate_backoff: str | None = None
    """A generation's backoff (see parse_backoff); unset: RETRY_BASE_DELAY..RETRY_MAX_DELAY."""

    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    """`json`: one JSON object per line, for a log shipper."""
    debugpy_port: int | None = Field(None, ge=1, le=65535)
    """Listen for a debugger (VS Code "Attach") on this port; needs `pip install debugpy`."""

    retention_days: int = Field(7, ge=0)
    """Finished jobs and their images are deleted this many days after they finished; 0 keeps
    them forever."""
    retention_batch_size: int = Field(500, ge=1, le=10_000)

    image_store: Literal["postgres", "s3"] = "postgres"
    """Where new images go: `postgres` (a bytea in their row) or `s3` (an object of S3_BUCKET).
    Each image row says where its bytes are, so changing this never breaks older images."""
    image_delivery: Literal["proxy", "redirect"] = "proxy"
    """How GET /images serves an object: the server streams it (`proxy`), or answers 307 to a
    presigned URL of the bucket (`redirect`)."""
    s3_bucket: str | None = None
    s3_endpoint_url: AnyHttpUrl | None = None
    """Any S3-compatible server (MinIO, SeaweedFS, Garage, R2); unset: AWS."""
    s3_region: str = Field(
        "us-east-1", validation_alias=AliasChoices("s3_region", "aws_region", "aws_default_region")
    )
    s3_prefix: str = "images/"
    s3_presign_ttl: int = Field(3600, ge=1, le=604_800)
    """Seconds a redirect's presigned URL stays valid (S3 allows at most seven days)."""
    s3_create_bucket: bool = False
    """Create S3_BUCKET at start when it does not exist."""
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    aws_profile: str | None = None
    """A profile of AWS_SHARED_CREDENTIALS_FILE, used when AWS_ACCESS_KEY_ID is unset."""
    aws_shared_credentials_file: str = "~/.aws/credentials"

    webhook_secret: SecretStr | None = None
    """`whsec_` and base64: the key that signs webhook deliveries (Standard Webhooks)."""
    webhook_timeout: float = 10.0
    """Seconds one webhook delivery may take, from connecting to the response's status."""
    webhook_retry_schedule: str = "5s,1m,10m,1h,6h"
    """Delays between a delivery's attempts (a comma list of durations); then it gives up."""
    webhook_allow_private: bool = False
    """Let webhooks call private, loopback and link-local addresses, and plain http (local
    development only)."""

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

    @field_validator("image_model")
    @classmethod
    def _model_for_http(cls, value: str | None, info: ValidationInfo) -> str | None:
        value = (value or "").strip() or None
        provider = info.data.get("image_provider", "local")
        if value is None and provider != "local":
            raise ValueError(f"required when IMAGE_PROVIDER={provider} (the model to ask for)")
        return value

    @field_validator("image_prompt_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            parsed = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise ValueError(f"not a template: {exc}") from None
        fields = [(field, spec, conversion) for _, field, spec, conversion in parsed if field is not None]
        others = [
            field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            for field, spec, conversion in fields
            if (field, spec, conversion) != ("animal", "", None)
        ]
        if others:
            raise ValueError(f"{{animal}} is its only placeholder, not {{{others[0]}}}")
        if not fields:
            raise ValueError("must contain {animal}")
        return value

    @field_validator("openai_image_size")
    @classmethod
    def _size(cls, value: str) -> str:
        if not re.fullmatch(r"\d{2,5}x\d{2,5}|auto", value):
            raise ValueError("must be WIDTHxHEIGHT (1024x1024) or auto")
        return value

    @field_validator("openrouter_modalities", mode="before")
    @classmethod
    def _modalities(cls, value: object) -> object:
        value = _comma_list(value)
        if isinstance(value, list) and "image" not in value:
            raise ValueError("must include image (image,text or image)")
        return value

    @field_validator("worker_kinds", "cors_origins", mode="before")
    @classmethod
    def _lists(cls, value: object, info: ValidationInfo) -> object:
        parts = _comma_list(value)
        return parts or (None if info.field_name == "worker_kinds" else [])

    @field_validator("generate_backoff")
    @classmethod
    def _backoff(cls, value: str | None) -> str | None:
        if value is not None:
            parse_backoff(value)
        return value

    def prompt(self, animal: str) -> str:
        """The text sent to the model for `animal`."""
        return self.image_prompt_template.format(animal=animal)

    @property
    def generation_timeout(self) -> float:
        """JOB_TIMEOUT, or its default: 300 s for the local renderer; for an HTTP provider, time
        for every image of every generation this worker runs at once (its slots) to take the
        full IMAGE_PROVIDER_TIMEOUT, PROVIDER_MAX_CONCURRENCY calls at a time, plus a minute
        (1260 s with the defaults: 10 images x 4 slots / 4 calls = 10 rounds of 120 s)."""
        if self.job_timeout is not None:
            return self.job_timeout
        if self.image_provider == "local":
            return 300.0
        rounds = -(-self.max_images_per_job * self.worker_concurrency // self.provider_max_concurrency)
        return rounds * self.image_provider_timeout + 60.0

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        webhook_key(value.get_secret_value())
        return value

    @field_validator("webhook_timeout", mode="before")
    @classmethod
    def _timeout(cls, value: object) -> object:
        seconds = parse_duration(value) if isinstance(value, str) else value
        if isinstance(seconds, int | float) and seconds <= 0:
            raise ValueError("must be above 0")
        return seconds

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        retry_delays(value)
        return value

    @property
    def webhook_retry_delays(self) -> tuple[float, ...]:
        return retry_delays(self.webhook_retry_schedule)

    @field_validator("auth", mode="before")
    @classmethod
    def _lowercase_auth(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _no_open_server(self) -> Settings:
        if self.auth == "none" and not is_loopback(self.host):
            raise ValueError(
                f"AUTH=none is allowed only while HOST is a loopback address, not {self.host!r}: "
                "use AUTH=keys (and menagerie keys create NAME)"
            )
        return self

    @property
    def database(self) -> str:
        """DATABASE_URL, once resolved (the entry point starts the embedded PostgreSQL when it
        is unset)."""
        if self.database_url is None:
            raise RuntimeError("DATABASE_URL is not resolved: call app.process.prepare first")
        return self.database_url

    def kind(self, name: str) -> KindSettings:
        """How workers run kind `name`: `<NAME>_SLOTS`, `<NAME>_MAX_ATTEMPTS`, `<NAME>_TIMEOUT`
        and `<NAME>_BACKOFF`, each unset by default. A generation's are also known by the
        older names WORKER_CONCURRENCY, JOB_MAX_ATTEMPTS, JOB_TIMEOUT and RETRY_*_DELAY.
        Raises SettingError naming a bad one."""
        if name == "generate":
            backoff = self.generate_backoff
            return KindSettings(
                slots=self.worker_concurrency,
                max_attempts=self.job_max_attempts,
                timeout=self.generation_timeout,
                backoff=parse_backoff(backoff)
                if backoff
                else ("exponential", self.retry_base_delay, self.retry_max_delay),
            )
        if name == "webhook":
            # WEBHOOK_TIMEOUT is a delivery's HTTP timeout; an attempt also resolves the host
            # and writes to the database. WEBHOOK_RETRY_SCHEDULE is the backoff.
            own = _kind_variables(name, skip={"timeout"})
            delays = self.webhook_retry_delays
            return KindSettings(
                slots=own.slots,
                max_attempts=own.max_attempts or len(delays) + 1,
                timeout=self.webhook_timeout + 5.0,
                backoff=own.backoff or ("schedule", delays),
            )
        return _kind_variables(name)

    @field_validator("s3_prefix")
    @classmethod
    def _prefix_is_a_folder(cls, value: str) -> str:
        if value and (not value.endswith("/") or value.startswith("/") or "//" in value):
            raise ValueError("must be empty or a folder such as images/ (ending in /, not starting with one)")
        return value

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> Settings:
        if self.image_store == "s3" and not self.s3_bucket:
            raise ValueError("IMAGE_STORE=s3 needs S3_BUCKET")
        return self

    def s3_credentials(self) -> tuple[str, str, str | None] | None:
        """(access key id, secret, session token): AWS_ACCESS_KEY_ID and
        AWS_SECRET_ACCESS_KEY, else AWS_PROFILE's section of the shared credentials file;
        None leaves the client to find them (an instance or container role). Raises
        SettingError naming what is missing."""
        if self.aws_access_key_id:
            if self.aws_secret_access_key is None:
                raise SettingError("AWS_SECRET_ACCESS_KEY", None, "needed with AWS_ACCESS_KEY_ID")
            token = self.aws_session_token.get_secret_value() if self.aws_session_token else None
            return self.aws_access_key_id, self.aws_secret_access_key.get_secret_value(), token
        if self.aws_profile is None:
            return None
        path = os.path.expanduser(self.aws_shared_credentials_file)
        parser = configparser.ConfigParser()
        parser.read(path, encoding="utf-8")
        if not parser.has_section(self.aws_profile):
            raise SettingError("AWS_PROFILE", self.aws_profile, f"no such profile in {path}")
        section = parser[self.aws_profile]
        if "aws_access_key_id" not in section or "aws_secret_access_key" not in section:
            raise SettingError(
                "AWS_PROFILE",
                self.aws_profile,
                "the profile has no aws_access_key_id and aws_secret_access_key",
            )
        return (
            section["aws_access_key_id"],
            section["aws_secret_access_key"],
            section.get("aws_session_token"),
        )

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


def _comma_list(value: object) -> object:
    """A comma list read from a variable, as the list of its items; anything else as it is."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _kind_variables(name: str, *, skip: frozenset[str] | set[str] = frozenset()) -> KindSettings:
    """`<NAME>_SLOTS`, `<NAME>_MAX_ATTEMPTS`, `<NAME>_TIMEOUT` and `<NAME>_BACKOFF` (those not in
    `skip`), each None when unset; SettingError names a bad one."""
    prefix = re.sub(r"\W", "_", name).upper()
    found: dict[str, object] = {}
    for field, parse, valid in (
        ("slots", int, lambda value: 1 <= value <= 1000),
        ("max_attempts", int, lambda value: 1 <= value <= 100),
        ("timeout", parse_duration, lambda value: value > 0),
        ("backoff", parse_backoff, lambda value: True),
    ):
        if field in skip:
            continue
        variable = f"{prefix}_{field.upper()}"
        raw = os.environ.get(variable)
        if raw is None:
            continue
        try:
            value = parse(raw)
        except ValueError as exc:
            raise SettingError(variable, raw, str(exc)) from None
        if not valid(value):
            raise SettingError(variable, raw, "out of range")
        found[field] = value
    return KindSettings(**found)  # type: ignore[arg-type]


def retry_delays(text: str) -> tuple[float, ...]:
    """`5s,1m,10m`: the delays before each retry, in turn (at least one)."""
    delays = tuple(parse_duration(part) for part in text.split(","))
    if not delays:
        raise ValueError("needs at least one delay")
    return delays


def webhook_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_…` secret: the base64 after the prefix (Standard Webhooks)."""
    if not secret.startswith("whsec_"):
        raise ValueError("must start with whsec_ (then base64, as Standard Webhooks secrets do)")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after whsec_ is not base64") from None
    if len(key) < 16:
        raise ValueError("the key must be at least 16 bytes")
    return key


def is_loopback(host: str) -> bool:
    """Whether `host` (HOST) only listens on this machine: localhost, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load(**overrides: Any) -> Settings:
    """Read settings; on a bad value print one line naming the variable and exit 2."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a rule between settings: the message names them
            stop(f"bad settings: {message}")
        name = _variable(str(error["loc"][0]))
        stop(f"bad setting {name}={error.get('input')!r}: {message}")


def _variable(name: str) -> str:
    """The environment variable a bad value came from: of a setting's names (GENERATE_SLOTS or
    WORKER_CONCURRENCY, say), the one that is set."""
    for field in Settings.model_fields.values():
        choices = getattr(field.validation_alias, "choices", None)
        if choices and name in choices:
            for choice in choices:
                if choice.upper() in os.environ or choice in os.environ:
                    return str(choice).upper()
    return name.upper()


def stop(message: str) -> NoReturn:
    """Stop the process at start: one line on stderr, exit code 2."""
    print(f"menagerie: {message}", file=sys.stderr)
    raise SystemExit(2)
