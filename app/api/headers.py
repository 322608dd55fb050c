"""Request headers read once per request, and the headers every answer carries."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def header(scope: Scope, name: bytes) -> str | None:
    """One request header (lower-case `name`), repeated ones joined with ", " (RFC 9110 5.3).
    Read from a dict made once per request: Starlette's Headers scans the whole list at every
    lookup, and a job's GET reads several."""
    found: dict[bytes, bytes] | None = scope.get("menagerie.headers")
    if found is None:
        found = scope["menagerie.headers"] = {}
        for key, value in scope["headers"]:
            found[key] = found[key] + b", " + value if key in found else value
    value = found.get(name)
    return None if value is None else value.decode("latin-1")


SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]


class SecurityHeadersMiddleware:
    """Every answer says `X-Content-Type-Options: nosniff` (a browser never guesses a type
    other than the one sent) and `Referrer-Policy: no-referrer` (signed image URLs do not
    leak to other sites)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_secured)
