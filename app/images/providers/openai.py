"""OpenAI's images API, or any server that speaks it (LocalAI, a self-hosted gateway):
`POST {OPENAI_BASE_URL}/images/generations`, one image per call."""

from __future__ import annotations

from typing import Any

import httpx

from app.images.providers import Image
from app.images.providers.http import Endpoint, HttpProvider


class OpenAIProvider(HttpProvider):
    name = "openai"

    def __init__(self, client: httpx.AsyncClient, endpoint: Endpoint, *, size: str) -> None:
        super().__init__(client, endpoint)
        self.size = size

    def body(self, *, prompt: str, model: str) -> dict[str, Any]:
        """`n: 1` and the size; only the dall-e models take `response_format` (the GPT image
        models always answer in base64 and refuse the parameter)."""
        body: dict[str, Any] = {"model": model, "prompt": prompt, "n": 1, "size": self.size}
        if model.startswith("dall-e"):
            body["response_format"] = "b64_json"
        return body

    async def make(self, *, prompt: str, model: str) -> Image:
        answer, headers = await self.post("/images/generations", self.body(prompt=prompt, model=model))
        request_id = headers.get("x-request-id")
        data = answer.get("data") if isinstance(answer, dict) else None
        first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else None
        if first is None:
            raise self.no_image("no data[0]")
        if isinstance(first.get("b64_json"), str) and first["b64_json"]:
            return self.image(self.decode(first["b64_json"]), request_id)
        if isinstance(first.get("url"), str) and first["url"]:
            return self.image(await self.download(first["url"]), request_id)
        raise self.no_image("data[0] has neither b64_json nor url")
