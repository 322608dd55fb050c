"""Request headers read once per request, and the headers answers carry."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import Scope


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


SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"))
"""On every answer: a browser never guesses a type other than the one sent, and signed image
URLs do not leak to other sites through Referer."""

Header = tuple[bytes, bytes]
_ADDED = "menagerie.answer_headers"


def add_to_answer(scope: Scope, always: Sequence[Header], *, unless_set: Sequence[Header] = ()) -> None:
    """Ask for headers on this request's answer, whichever endpoint writes it: `always`, and
    each of `unless_set` when the answer has no header of that name (app/api/edge.py adds
    them)."""
    scope[_ADDED] = (always, unless_set)


def with_added(scope: Scope, headers: list[Header]) -> list[Header]:
    """`headers` (an answer's, lower-case names as Starlette writes them) and those asked for
    with add_to_answer."""
    added: tuple[Sequence[Header], Sequence[Header]] | None = scope.get(_ADDED)
    if added is None:
        return headers
    always, unless_set = added
    for pair in unless_set:
        if not any(name == pair[0] for name, _ in headers):
            headers.append(pair)
    headers.extend(always)
    return headers
