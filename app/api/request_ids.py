"""Request ids: taken from `X-Request-ID` (when sane) or made, echoed on the response, and
attached to every log record and problem body written while the request is handled."""

from __future__ import annotations

import os
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs

HEADER = b"x-request-id"
_SANE = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")

current = logs.request_id


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == HEADER), None)
        text = given.decode("latin-1") if given is not None else ""
        request_id = text if text and _SANE.fullmatch(text) else os.urandom(16).hex()
        header = (HEADER, request_id.encode("latin-1"))
        token = current.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                # A new list: the one in the message may be the response object's own.
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current.reset(token)
