"""Request ids: taken from `X-Request-ID` (when sane) or made, echoed on the response (by
app/api/edge.py), and attached to every log record and problem body written while the
request is handled."""

from __future__ import annotations

import os
import re

from starlette.types import Scope

from app import logs
from app.api.headers import header

HEADER = b"x-request-id"
_SANE = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")

current = logs.request_id


def of(scope: Scope) -> str:
    """The request's own id when it sent a sane one, else a new random one."""
    given = header(scope, HEADER)
    return given if given and _SANE.fullmatch(given) else os.urandom(16).hex()
