"""Image providers: what turns a generation's prompt (and animal) into image bytes.

`local` renders on this machine and needs no network; `openai` and `openrouter` call HTTP image
models (app/images/providers/http.py holds what they share: the client, the checks on what
comes back, the classification of failures). Every provider can draw every animal of the
catalogue: the prompt names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

NAMES = ("local", "openai", "openrouter")
"""IMAGE_PROVIDER's values."""


@dataclass(frozen=True, slots=True)
class Image:
    """One image as a provider made it."""

    data: bytes
    content_type: str
    """image/png, image/jpeg or image/webp, as Pillow read `data`."""
    request_id: str | None = None
    """The provider's id of the call, when it sent one."""


class ProviderError(Exception):
    """The provider could not make an image. `transient` errors are worth retrying, after
    `retry_after` seconds when the provider said so (Retry-After); the message is the
    provider's own, never holding a key."""

    def __init__(self, message: str, *, transient: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.retry_after = retry_after


class Provider(Protocol):
    name: str

    async def generate(
        self, *, prompt: str, model: str | None, animal: str, job_id: UUID, index: int
    ) -> Image:
        """Return image `index` of job `job_id`; raise ProviderError when it cannot."""
        ...
