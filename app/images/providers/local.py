"""Renders PNGs on this machine; `delay` stands in for a slow model. It draws the animal and
ignores the prompt and the model."""

from __future__ import annotations

import asyncio
from uuid import UUID

from app.images.providers import Image
from app.images.providers.render import render_png


class LocalProvider:
    name = "local"

    def __init__(self, *, delay: float, size: int) -> None:
        self._delay = delay
        self._size = size

    async def generate(
        self, *, prompt: str, model: str | None, animal: str, job_id: UUID, index: int
    ) -> Image:
        if self._delay:
            await asyncio.sleep(self._delay)
        png = await asyncio.to_thread(render_png, animal, seed=job_id.bytes, index=index, size=self._size)
        return Image(png, "image/png")
