"""Image providers: what turns (animal, job, index) into PNG bytes.

The local provider needs no network; HTTP providers can be added beside it.
"""

from __future__ import annotations

from typing import Protocol
from uuid import UUID


class ProviderError(Exception):
    """The provider could not make an image. `transient` errors are worth retrying."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class Provider(Protocol):
    async def generate(self, *, animal: str, job_id: UUID, index: int) -> bytes:
        """Return one PNG; raise ProviderError when it cannot."""
        ...
