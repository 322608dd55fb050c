"""A fake image-model server for the provider tests: OpenAI's images API and OpenRouter's chat
completions, with their documented request and answer shapes, served by uvicorn on a free local
port. It records every request, and answers each from a script (`fake.script(...)`, consumed in
order) or, when the script is empty, with a fresh small PNG.

    fake = FakeModels()
    await fake.start()
    fake.script(Reply(429, {"error": {...}}, headers={"Retry-After": "2"}))  # then a success
    ...
    await fake.stop()   # a connection refused from now on; fake.start() again on the same port
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support import free_port

KEY = "sk-test-0123456789-secret"
"""The key the tests configure; it must never show in an error, a log or a job."""


def picture(number: int, kind: str = "PNG") -> bytes:
    """A small image, different for every `number`."""
    buffer = io.BytesIO()
    color = (number * 37 % 256, number * 91 % 256, number * 53 % 256)
    Image.new("RGB", (8, 8), color).save(buffer, format=kind)
    return buffer.getvalue()


@dataclass
class Reply:
    """One scripted answer: a status, a JSON body (or raw `text`), headers, after `delay`."""

    status: int = 200
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    text: str | None = None
    delay: float = 0.0


@dataclass
class Picture:
    """A scripted success: this image's bytes, in base64 (or as a `url` to download, OpenAI
    only), after `delay` seconds."""

    data: bytes
    as_url: bool = False
    delay: float = 0.0


@dataclass
class Huge:
    """A scripted success whose image is a link to a body of `size` bytes."""

    size: int


@dataclass
class Seen:
    """A request the fake received."""

    path: str
    headers: dict[str, str]
    body: Any
    at: float
    """time.monotonic() when it arrived."""


class FakeModels:
    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[Seen] = []
        self.served: list[bytes] = []
        """Every image it answered with, in order."""
        self.in_flight = 0
        self.most_in_flight = 0
        self._script: deque[Reply | Picture | Huge] = deque()
        self._files: dict[str, bytes] = {}
        self._numbers = itertools.count(1)
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/images/generations", self._openai, methods=["POST"]),
                Route("/v1/chat/completions", self._openrouter, methods=["POST"]),
                Route("/files/{name}", self._file, methods=["GET"]),
                Route("/huge/{size:int}", self._huge, methods=["GET"]),
            ]
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What OPENAI_BASE_URL or OPENROUTER_BASE_URL point at."""
        return f"{self.url}/v1"

    def script(self, *replies: Reply | Picture | Huge) -> None:
        """Answer the next requests with `replies`, in order (then with fresh PNGs again)."""
        self._script.extend(replies)

    def api_requests(self) -> list[Seen]:
        return [seen for seen in self.requests if seen.path.startswith("/v1/")]

    async def start(self) -> None:
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None

    # The endpoints

    async def _openai(self, request: Request) -> Response:
        return await self._answer(request, openai=True)

    async def _openrouter(self, request: Request) -> Response:
        return await self._answer(request, openai=False)

    async def _answer(self, request: Request, *, openai: bool) -> Response:
        body = await request.json()
        self.requests.append(Seen(request.url.path, dict(request.headers), body, time.monotonic()))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            step = self._script.popleft() if self._script else Picture(picture(next(self._numbers)))
            await asyncio.sleep(step.delay if not isinstance(step, Huge) else 0)
            if isinstance(step, Reply):
                if step.text is not None:
                    return Response(step.text, step.status, headers=step.headers, media_type="text/plain")
                return JSONResponse(step.json, step.status, headers=step.headers)
            if isinstance(step, Huge):
                return self._success(openai, url=f"{self.url}/huge/{step.size}")
            self.served.append(step.data)
            if step.as_url:
                name = f"{len(self._files)}.img"
                self._files[name] = step.data
                return self._success(openai, url=f"{self.url}/files/{name}")
            return self._success(openai, b64=base64.b64encode(step.data).decode(), kind=_mime(step.data))
        finally:
            self.in_flight -= 1

    def _success(
        self, openai: bool, *, b64: str | None = None, url: str | None = None, kind: str = ""
    ) -> Response:
        number = next(self._numbers)
        if openai:
            item = {"b64_json": b64} if b64 is not None else {"url": url}
            return JSONResponse(
                {"created": 1764460800, "data": [item]}, headers={"x-request-id": f"req_{number}"}
            )
        image_url = f"data:{kind};base64,{b64}" if b64 is not None else url
        return JSONResponse(
            {
                "id": f"gen-{number}",
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {
                            "role": "assistant",
                            "content": "Here is your picture.",
                            "images": [{"type": "image_url", "image_url": {"url": image_url}}],
                        },
                    }
                ],
            }
        )

    async def _file(self, request: Request) -> Response:
        self.requests.append(Seen(request.url.path, dict(request.headers), None, time.monotonic()))
        return Response(self._files[request.path_params["name"]], media_type="application/octet-stream")

    async def _huge(self, request: Request) -> Response:
        """A body of the asked size, streamed, with no Content-Length to give it away."""
        self.requests.append(Seen(request.url.path, dict(request.headers), None, time.monotonic()))
        size: int = request.path_params["size"]
        chunk = b"\x89PNG" + bytes(65_532)

        async def body():  # type: ignore[no-untyped-def]
            sent = 0
            while sent < size:
                yield chunk
                sent += len(chunk)

        return StreamingResponse(body(), media_type="image/png")


def _mime(data: bytes) -> str:
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[8:12] == b"WEBP":
        return "image/webp"
    return "image/png"


async def _serve_forever(port: int) -> None:
    fake = FakeModels()
    fake.port = port
    await fake.start()
    print(
        f"fake image models on {fake.base_url} (OpenAI images API and OpenRouter chat completions); Ctrl-C stops"
    )
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


if __name__ == "__main__":
    # Run by hand to try the HTTP providers without a key or a bill (README, "Use a real model").
    import argparse

    parser = argparse.ArgumentParser(
        description="A fake image-model server: every request gets a small picture."
    )
    parser.add_argument("--port", type=int, default=8080)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(parser.parse_args().port))
