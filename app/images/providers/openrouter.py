"""OpenRouter's image models: `POST {OPENROUTER_BASE_URL}/chat/completions` with output
modalities; the image is the first data URL of `choices[0].message.images`."""

from __future__ import annotations

from typing import Any

import httpx

from app.images.providers import Image
from app.images.providers.http import Endpoint, HttpProvider


class OpenRouterProvider(HttpProvider):
    name = "openrouter"

    def __init__(self, client: httpx.AsyncClient, endpoint: Endpoint, *, modalities: list[str]) -> None:
        super().__init__(client, endpoint)
        self.modalities = modalities

    def body(self, *, prompt: str, model: str) -> dict[str, Any]:
        return {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "modalities": self.modalities,
        }

    async def make(self, *, prompt: str, model: str) -> Image:
        answer, headers = await self.post("/chat/completions", self.body(prompt=prompt, model=model))
        if not isinstance(answer, dict):
            raise self.no_image("the answer is not a JSON object")
        request_id = answer.get("id") if isinstance(answer.get("id"), str) else headers.get("x-request-id")
        try:
            message = answer["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            raise self.no_image("no choices[0].message") from None
        images = message.get("images") if isinstance(message, dict) else None
        for image in images if isinstance(images, list) else []:
            url = image.get("image_url", {}).get("url") if isinstance(image, dict) else None
            if isinstance(url, str) and url:
                if not url.startswith("data:"):
                    return self.image(await self.download(url), request_id)
                return self.image(self.decode(url), request_id)
        text = message.get("content") if isinstance(message, dict) else None
        said = f"; it said: {' '.join(text.split())[:200]}" if isinstance(text, str) and text.strip() else ""
        raise self.no_image(f"choices[0].message.images is empty{said}")
