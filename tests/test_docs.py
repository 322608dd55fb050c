"""The documents a newcomer reads stay true: the API contract's endpoint table lists exactly
the operations the OpenAPI document (generated from the code) has, and the README links only
to files inside the repository and names every module of the package in its code layout."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import api_client

ROOT = Path(__file__).resolve().parent.parent
NOT_IN_OPENAPI = {("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/")}
"""The document, its page and the dashboard: served, but not operations the document
describes."""


def contract_operations() -> set[tuple[str, str]]:
    """(method, path) of every row of docs/API.md's endpoint table, paths as OpenAPI spells
    them ({jobId} is {job_id}; an image's file name is {name})."""
    text = (ROOT / "docs" / "API.md").read_text()
    table = text.split("## Endpoints", 1)[1].split("\n## ", 1)[0]
    found = set()
    for cell in re.findall(r"^\| ([^|]+) \|", table, re.MULTILINE):
        for method, path in re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`]*)`", cell):
            path = path.replace("{jobId}", "{job_id}").replace("{index}.png", "{name}")
            found.add((method, path))
    return found


async def test_the_contracts_endpoint_table_matches_the_openapi_document(settings):
    """Every operation of /openapi.json has a row in docs/API.md, and every row is an
    operation of the document (or the document and its docs page themselves)."""
    async with api_client(settings) as http:
        document = (await http.get("/openapi.json")).json()
    operations = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert contract_operations() - NOT_IN_OPENAPI == operations


def test_the_readme_links_only_to_files_in_the_repository():
    """Every relative link of the README names a file that exists in the repository."""
    readme = (ROOT / "README.md").read_text()
    links = [target for target in re.findall(r"\]\(([^)#\s]+)", readme) if "://" not in target]
    assert links, "the README links to the contract and the benchmark results"
    for target in links:
        path = (ROOT / target).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), target


def test_the_readmes_code_layout_names_every_module():
    """Every module of app/ has a row in the README's code layout (a new module comes with its
    line there)."""
    layout = (ROOT / "README.md").read_text().split("## Code layout", 1)[1].split("\n## ", 1)[0]
    modules = [path.relative_to(ROOT).as_posix() for path in (ROOT / "app").rglob("*.py")]
    unnamed = [module for module in modules if module not in layout and not module.endswith("__init__.py")]
    assert modules and not unnamed
