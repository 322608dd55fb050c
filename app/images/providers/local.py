"""Renders PNGs on this machine; `delay` stands in for a slow model."""

from __future__ import annotations

import asyncio
from uuid import UUID

from app.images.providers.render import render_png


class LocalProvider:
    def __init__(self, *, delay: float, size: int) -> None:
        self._delay = delay
        self._size = size

    async def generate(self, *, animal: str, job_id: UUID, index: int) -> bytes:
        if self._delay:
            await asyncio.sleep(self._delay)
        return await asyncio.to_thread(render_png, animal, seed=job_id.bytes, index=index, size=self._size)
