"""The dashboard: the page at `/` and its files at `/static/…`, from the package's `static`
folder (package data, like the SQL). Plain HTML, CSS and JavaScript modules: nothing to
build, nothing fetched from elsewhere (the Content-Security-Policy says so to the browser).

The files are read once, when the app is built, each with a strong ETag of its bytes. They
are answered with `Cache-Control: no-cache`: a browser keeps them and asks again each time,
and an unchanged file costs a bodiless 304 (their names carry no version, so a longer
max-age would keep an old page after an upgrade)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.api import etags
from app.api.problems import Problem

STATIC_DIR = Path(str(files("app") / "static"))
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load(directory: Path = STATIC_DIR) -> dict[str, Asset]:
    """Every file of `directory` by its path inside it; an error when the page is missing (a
    package installed without its data)."""
    assets = {
        path.relative_to(directory).as_posix(): Asset(body, MEDIA_TYPES[path.suffix], etags.of(body))
        for path in sorted(directory.rglob("*"))
        if path.suffix in MEDIA_TYPES and (body := path.read_bytes())
    }
    if "index.html" not in assets:
        raise RuntimeError(f"no index.html in {directory}: is the package installed whole?")
    return assets


def content_security_policy(image_origin: str | None) -> str:
    """Everything from this server only; images also from PUBLIC_BASE_URL's origin, which
    their URLs name."""
    images = "'self'" if image_origin is None else f"'self' {image_origin}"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        f"img-src {images}; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


def routes(*, image_origin: str | None = None) -> list[BaseRoute]:
    assets = load()
    policy = content_security_policy(image_origin)

    def answer(request: Request, asset: Asset) -> Response:
        headers = {
            "ETag": asset.etag,
            "Cache-Control": "no-cache",
        }
        if asset.media_type.startswith("text/html"):
            headers["Content-Security-Policy"] = policy
        if etags.matches(request.headers.get("if-none-match"), asset.etag):
            return Response(status_code=304, headers=headers)
        return Response(asset.body, headers=headers, media_type=asset.media_type)

    async def index(request: Request) -> Response:
        return answer(request, assets["index.html"])

    async def static(request: Request) -> Response:
        asset = assets.get(request.path_params["path"])
        if asset is None:
            raise Problem(404, "no such file")
        return answer(request, asset)

    return [
        Route("/", index, methods=["GET"]),
        Route("/static/{path:path}", static, methods=["GET"]),
    ]
