"""What the HTTP providers share: one pooled client per worker process, the call, the checks on
what comes back, and the classification of every failure as transient or permanent.

Transient (the job is retried, after the provider's Retry-After when it sends one): connection
errors, timeouts, 408, 409, 429 and 5xx, and a 200 whose image is missing, not base64 or not an
image. Permanent (the job fails at once, with the provider's own message): every other 4xx,
a 429 that says the quota or billing is exhausted, and an image over MAX_IMAGE_BYTES.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import io
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
from PIL import Image as Pillow
from PIL import UnidentifiedImageError

from app.images.providers import Image, ProviderError

CONNECT_TIMEOUT = 5.0
TRANSIENT_STATUSES = frozenset({408, 409, 429})
QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})
CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
MESSAGE_LIMIT = 300
"""Characters of a provider's message kept in a job's error."""


def new_client(*, timeout: float, max_connections: int) -> httpx.AsyncClient:
    """The worker process's one client: pooled, 5 s to connect, `timeout` for the rest."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        headers={"User-Agent": "menagerie"},
    )


@dataclass(frozen=True)
class Endpoint:
    """How to reach one provider: its name (in errors), base URL and key, and the limits of
    one call."""

    name: str
    base_url: str
    key: str
    timeout: float
    """Seconds one image may take, its download included."""
    max_image_bytes: int


class HttpProvider:
    """The shared half of an HTTP provider; openai.py and openrouter.py say what to send and
    where the image is in the answer."""

    name: str

    def __init__(self, client: httpx.AsyncClient, endpoint: Endpoint) -> None:
        self.client = client
        self.endpoint = endpoint

    async def generate(
        self, *, prompt: str, model: str | None, animal: str, job_id: UUID, index: int
    ) -> Image:
        """One call (and the download of a linked image) under one deadline."""
        if model is None:
            raise ProviderError(f"{self.name} needs a model; this generation has none")
        async with failures(self.name, self.endpoint.timeout):
            return await self.make(prompt=prompt, model=model)

    async def make(self, *, prompt: str, model: str) -> Image:
        """Ask for one image of `prompt` from `model`."""
        raise NotImplementedError

    async def post(self, path: str, body: Mapping[str, Any]) -> tuple[Any, httpx.Headers]:
        """POST `body` as JSON to the API with the key; the decoded JSON answer and its headers.
        A non-2xx answer, or a 2xx one carrying an `error` object, raises ProviderError."""
        url = self.endpoint.base_url.rstrip("/") + path
        headers = {"Authorization": f"Bearer {self.endpoint.key}"}
        async with self.client.stream("POST", url, json=body, headers=headers) as response:
            raw = await self._read(response, answer_limit(self.endpoint.max_image_bytes))
        answer = _json(raw)
        if not response.is_success:
            raise self._refusal(response.status_code, answer, raw, response.headers)
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            code = str(answer["error"].get("code"))
            status = int(code) if code.isdigit() else 500
            raise self._refusal(status, answer, raw, response.headers)
        if answer is None:
            raise ProviderError(f"{self.name} answered {response.status_code} with no JSON", transient=True)
        return answer, response.headers

    async def download(self, url: str) -> bytes:
        """An image the provider answered with a link to: same client, same limits, no key."""
        async with self.client.stream("GET", url, follow_redirects=True) as response:
            data = await self._read(response, self.endpoint.max_image_bytes)
        if not response.is_success:
            raise self._refusal(
                response.status_code, None, data[:MESSAGE_LIMIT], response.headers, "image download"
            )
        return data

    def decode(self, encoded: str) -> bytes:
        """Base64 (a data URL's, or a bare one) to bytes, at most MAX_IMAGE_BYTES."""
        if encoded.startswith("data:"):
            header, _, encoded = encoded.partition(",")
            if not header.endswith(";base64"):
                raise ProviderError(f"{self.name} answered a data URL that is not base64", transient=True)
        if len(encoded) * 3 // 4 > self.endpoint.max_image_bytes + 3:
            raise self._too_large()
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ProviderError(
                f"{self.name} answered an image that is not valid base64", transient=True
            ) from None
        if len(data) > self.endpoint.max_image_bytes:
            raise self._too_large()
        return data

    def image(self, data: bytes, request_id: str | None) -> Image:
        """`data` if Pillow reads it as a PNG, JPEG or WebP image, with its type."""
        try:
            with Pillow.open(io.BytesIO(data)) as opened:
                kind = opened.format
                opened.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Pillow.DecompressionBombError):
            raise ProviderError(
                f"{self.name} answered {len(data)} bytes that are not an image", transient=True
            ) from None
        content_type = CONTENT_TYPES.get(kind or "")
        if content_type is None:
            raise ProviderError(f"{self.name} answered a {kind} image, not PNG, JPEG or WebP", transient=True)
        return Image(data, content_type, request_id)

    def no_image(self, detail: str) -> ProviderError:
        return ProviderError(f"{self.name} answered with no image ({detail})", transient=True)

    def _too_large(self) -> ProviderError:
        return ProviderError(
            f"{self.name} answered an image over MAX_IMAGE_BYTES ({self.endpoint.max_image_bytes} bytes)"
        )

    async def _read(self, response: httpx.Response, limit: int) -> bytes:
        """The body, refused once it passes `limit` bytes (the rest is never read)."""
        declared = response.headers.get("content-length", "")
        if response.is_success and declared.isdigit() and int(declared) > limit:
            raise self._too_large()
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                if not response.is_success:
                    break
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def _refusal(
        self, status: int, answer: Any, raw: bytes, headers: httpx.Headers, what: str = ""
    ) -> ProviderError:
        """The ProviderError for an answer with `status` (or an error object's code)."""
        error = answer.get("error") if isinstance(answer, dict) else None
        message, code = "", ""
        if isinstance(error, dict):
            message = str(error.get("message") or "")
            code = str(error.get("code") or error.get("type") or "")
            if code.isdigit():
                code = ""
        elif isinstance(error, str):
            message = error
        if not message:
            message = raw.decode("utf-8", "replace").strip() or "no message"
        message = " ".join(message.replace(self.endpoint.key, "[key]").split())[:MESSAGE_LIMIT]
        quota = code in QUOTA_CODES or (isinstance(error, dict) and error.get("type") in QUOTA_CODES)
        transient = (status in TRANSIENT_STATUSES or status >= 500) and not quota
        label = f"{self.name}{' ' + what if what else ''} {status}{f' {code}' if code else ''}"
        if code == "content_policy_violation" or "moderation" in code:
            label += " (refused by the content policy)"
        retry_after = parse_retry_after(headers.get("retry-after")) if transient else None
        return ProviderError(f"{label}: {message}", transient=transient, retry_after=retry_after)


@contextlib.asynccontextmanager
async def failures(name: str, timeout: float) -> AsyncIterator[None]:
    """Turns what httpx raises, and the end of `timeout`, into transient ProviderErrors."""
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        raise ProviderError(f"{name} did not answer within {timeout:g}s", transient=True) from None
    except httpx.TimeoutException as exc:
        raise ProviderError(f"{name} timed out ({type(exc).__name__})", transient=True) from None
    except httpx.TransportError as exc:
        raise ProviderError(
            f"{name} could not be reached ({type(exc).__name__}: {exc})", transient=True
        ) from None


def answer_limit(max_image_bytes: int) -> int:
    """The largest JSON answer read: a base64 image of MAX_IMAGE_BYTES and some room."""
    return max_image_bytes * 4 // 3 + 65_536


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP date; None
    when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)
