"""Loads every named query from `sql/*.sql` once, at import.

A section starts with `-- name: some_query`; its first comment lines say what it does and
which parameters it takes. Python refers to queries by name (`queries.job_claim`) and never
builds SQL itself. The files are package data: `app/queries` is the repository's `sql/`
(a link), copied into the wheel, so an installed menagerie finds them wherever it runs.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path
from types import MappingProxyType

SQL_DIR = Path(str(files("app") / "queries"))
_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Split one file into {name: query}, keeping each query's text without the trailing `;`."""
    parts = _HEADER.split(text)
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        query = body.strip().rstrip(";").strip()
        if name in found:
            raise ValueError(f"query {name!r} is defined twice")
        found[name] = query
    return found


class Queries:
    """Named queries as attributes; an unknown name fails loudly."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self._queries = MappingProxyType(mapping)

    def __getattr__(self, name: str) -> str:
        try:
            return self._queries[name]
        except KeyError:
            raise AttributeError(f"no query named {name!r} in {SQL_DIR}") from None


def load(directory: Path = SQL_DIR) -> Queries:
    """Every query of every .sql file in `directory`; an error when there is none (a package
    installed without its SQL would otherwise fail at its first query)."""
    merged: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        for name, query in parse(path.read_text(encoding="utf-8")).items():
            if name in merged:
                raise ValueError(f"query {name!r} is defined twice ({path.name})")
            merged[name] = query
    if not merged:
        raise RuntimeError(f"no named queries found in {directory}: is the package installed whole?")
    return Queries(merged)


queries = load()
