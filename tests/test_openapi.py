"""The OpenAPI document, the offline docs pages, and a Schemathesis run against a real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from app.api import create_app
from tests.support import api_client, free_port, wait_ready


@pytest.fixture
async def keyed_client(settings):
    async with api_client(settings.model_copy(update={"auth": "keys"})) as http:
        yield http


DOC_ROUTES = {"/openapi.json", "/docs", "/docs/swagger-init.js", "/redoc", "/", "/static/{path:path}"}
"""Pages and their files, not API operations: the docs and the dashboard."""


async def test_the_document_is_valid_openapi_3_1_and_documents_every_route(client, settings):
    """/openapi.json validates as OpenAPI 3.1 and lists every API route with its methods."""
    document = (await client.get("/openapi.json")).json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    app_routes = {
        (route.path, method.lower())
        for route in create_app(settings).routes
        if isinstance(route, Route) and route.path not in DOC_ROUTES
        for method in route.methods - {"HEAD"}
    }
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented == app_routes


NO_EXAMPLE = {
    "Idempotency-Key",
    "Prefer",
    "If-None-Match",
    "Last-Event-ID",
    "lastEventId",
    "token",
    "cursor",
    "expires",
    "sig",
}
"""Parameters Swagger UI's "Try it out" must not fill in: each changes what the request does
(a sample key replays an old job, a sample cursor lists nothing); their descriptions say
what goes there."""


async def test_every_status_and_required_parameter_has_an_example(client):
    """Each path and query parameter that needs no care has an example, and each response
    body an example (PNG bodies aside: bytes), so the docs show what a request and an answer
    look like; optional headers and the cursor have none, so that requests run from the docs
    page as shown do what they say."""
    document = (await client.get("/openapi.json")).json()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for param in operation.get("parameters", []):
                if param["name"] in NO_EXAMPLE:
                    assert "example" not in param, (path, method, param["name"])
                    assert param["description"], (path, method, param["name"])
                else:
                    assert "example" in param, (path, method, param["name"])
            for status, response in operation["responses"].items():
                for media, content in response.get("content", {}).items():
                    if media.startswith("image/"):  # binary: no example
                        continue
                    assert "example" in content or "examples" in content, (path, method, status, media)


async def test_the_maximum_number_of_images_is_the_configured_one(client, settings):
    """The request schema's numImages maximum is MAX_IMAGES_PER_JOB."""
    document = (await client.get("/openapi.json")).json()
    numbers = document["components"]["schemas"]["GenerationRequest"]["properties"]["numImages"]
    assert (numbers["minimum"], numbers["maximum"]) == (1, settings.max_images_per_job)


async def test_the_docs_page_works_with_no_internet(client):
    """/docs loads, and every script and stylesheet it uses is served by this service itself
    (no CDN). /redoc is gone: one docs page, without FastAPI installed for ReDoc's bundle."""
    assert (await client.get("/redoc")).status_code == 404
    for page, assets in {
        "/docs": [
            "/docs/static/swagger-ui.css",
            "/docs/static/swagger-ui-bundle.js",
            "/docs/swagger-init.js",
        ],
    }.items():
        html = (await client.get(page)).text
        assert "http://" not in html and "https://" not in html
        for asset in assets:
            assert asset in html
            response = await client.get(asset)
            assert response.status_code == 200 and len(response.content) > 50, asset


def schemathesis(base: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    st = Path(sys.executable).parent / "st"
    return subprocess.run(
        [
            str(st),
            "run",
            f"{base}/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            # The stream of every job's events never ends, so each request to it would only
            # wait out the timeout; tests/test_feed.py holds its events to the schema.
            "--exclude-operation-id",
            "all_events",
            "--max-examples",
            "15",
            "--seed",
            "7",
            "--request-timeout",
            "15",
            "--no-color",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


async def test_schemathesis_finds_no_server_error_and_no_response_off_the_schema(
    database_url, spawn, tmp_path: Path
):
    """Schemathesis, run against a real server (AUTH=keys) and worker, generates requests for
    every operation: with a valid key none gets a 5xx, and every response matches the
    documented schema, status, content type and headers; without a key every keyed operation
    answers 401, and nothing else is off the schema either. (Positive-data acceptance is left
    out: a cursor or an Idempotency-Key reused with another body is rejected by design, which
    no schema can say. GET /generations/events is left out: its stream never ends.)"""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "DATABASE_URL": database_url,
        "AUTO_MIGRATE": "false",
        "PORT": str(port),
        "IMAGE_PROVIDER_DELAY": "0",
        "IMAGE_SIZE": "64",
        "AUTH": "keys",
    }
    made = spawn(
        "-m",
        "app",
        "keys",
        "create",
        "st",
        "--rate",
        "100000/s",
        "--burst",
        "100000",
        env=env,
        stdout=subprocess.PIPE,
    )
    key = made.communicate(timeout=60)[0].decode().strip()
    server = spawn("server.py", env=env)
    spawn("worker.py", env=env)
    await wait_ready(base, server)
    keyed = schemathesis(base, tmp_path, "--header", f"Authorization: Bearer {key}")
    assert keyed.returncode == 0, keyed.stdout[-6000:] + keyed.stderr[-2000:]
    anonymous = schemathesis(base, tmp_path)
    assert anonymous.returncode == 0, anonymous.stdout[-6000:] + anonymous.stderr[-2000:]
    async with httpx.AsyncClient(base_url=base) as http:
        document = (await http.get("/openapi.json")).json()
        for path, item in document["paths"].items():
            for method, operation in item.items():
                if operation.get("security") == []:
                    continue
                url = path.format(job_id="6f1c0d0e-3b0a-4c5e-9a43-1d2b8f0c7a11", name="0.png")
                response = await http.request(method, url, json={"numImages": 1})
                assert response.status_code == 401, (method, path, response.status_code)


async def test_the_keyed_document_declares_the_bearer_scheme_and_its_answers(keyed_client):
    """With AUTH=keys the document declares the bearer scheme (Swagger UI's Authorize button),
    required by every operation but health, readiness and metrics; every keyed operation
    documents its 401 and 429 answers, and every operation on one job its 404."""
    document = (await keyed_client.get("/openapi.json")).json()
    validate(document)
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearer"]["description"],
    }
    assert document["security"] == [{"bearer": []}]
    public = {
        path for path, item in document["paths"].items() for op in item.values() if op.get("security") == []
    }
    assert public == {"/healthz", "/readyz", "/metrics"}
    for path, item in document["paths"].items():
        for operation in item.values():
            if path in public:
                continue
            assert operation.get("security", document["security"]) in (
                [{"bearer": []}],
                [{"bearer": []}, {}],
            )
            assert {"401", "429"} <= set(operation["responses"]), path
            if "{job_id}" in path:
                assert "404" in operation["responses"], path
            assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
            assert {"RateLimit", "RateLimit-Policy", "Retry-After"} <= set(
                operation["responses"]["429"]["headers"]
            )


async def test_the_docs_page_has_a_content_security_policy_for_this_service_alone(client):
    """/docs is served with a Content-Security-Policy allowing only this service's own
    scripts, styles and requests; the assets it loads are all this service's."""
    policy = (await client.get("/docs")).headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["connect-src"] == "'self'"
