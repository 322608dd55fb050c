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


async def page(request: Request) -> Response:
    return HTMLResponse(PAGE)


async def init(request: Request) -> Response:
    return Response(INIT, media_type="text/javascript")


def routes() -> list[BaseRoute]:
    return [
        Route("/docs", page, methods=["GET"]),
        Route("/docs/swagger-init.js", init, methods=["GET"]),
        Mount("/docs/static", StaticFiles(directory=swagger_ui_path)),
    ]
