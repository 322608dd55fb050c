"""The API's docs page: Swagger UI at /docs, reading /openapi.json, served from the
swagger-ui-bundle package's files, so it works with no internet access.

One page, not two: ReDoc's bundle came only with FastAPI (fastapi-offline), a whole web
framework installed for one JavaScript file; Swagger UI shows the same document and lets
people try the requests."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>menagerie API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/swagger-init.js"></script>
</body></html>"""

INIT = 'SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui", deepLinking: true});'

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Only this service's own scripts, styles and requests (Swagger UI sets inline styles and
draws its icons from data: URLs): the page works offline, and nothing injected into it could
load or send anything elsewhere."""


async def page(request: Request) -> Response:
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})


async def init(request: Request) -> Response:
    return Response(INIT, media_type="text/javascript")


def routes() -> list[BaseRoute]:
    return [
        Route("/docs", page, methods=["GET"]),
        Route("/docs/swagger-init.js", init, methods=["GET"]),
        Mount("/docs/static", StaticFiles(directory=swagger_ui_path)),
    ]
