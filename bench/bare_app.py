"""The ceiling for ``GET /generations/{id}``: bare Starlette and asyncpg, nothing else.

The same statement as the real endpoint (``generation_get``) on a pool made the same way
(``app.db.create_pool``), answered as ``json.dumps`` of the row: no middleware, no request
ids, no metrics, no pydantic, no ETag. bench/web.py serves it with the same uvicorn options
as ``menagerie server``, so the ratio of the two is what menagerie's HTTP layer costs.

Run by bench/web.py (``--measure get-bare``); by hand: ``DATABASE_URL=... python bench/bare_app.py``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import UUID

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import db
from app.sql import queries


async def get_generation(request: Request) -> Response:
    try:
        job_id = UUID(request.path_params["job_id"])
    except ValueError:
        return Response(status_code=404)
    row = await request.state.pool.fetchrow(queries.generation_get, job_id, None)  # no owner filter
    if row is None:
        return Response(status_code=404)
    return Response(json.dumps(dict(row), default=str), media_type="application/json")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
    pool = await db.create_pool(os.environ["DATABASE_URL"], size=10, application_name="bench-bare")
    try:
        yield {"pool": pool}
    finally:
        await pool.close()


app = Starlette(routes=[Route("/generations/{job_id}", get_generation)], lifespan=lifespan)


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ.get("PORT", "8000")),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        backlog=2048,
        timeout_keep_alive=5,
    )
