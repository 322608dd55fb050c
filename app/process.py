"""What every menagerie process does before its real work: logging, the database, migrations."""

from __future__ import annotations

import logging
import sys

import psycopg

from app import embedded, logs, migrate
from app.settings import Settings

log = logging.getLogger(__name__)


def prepare(settings: Settings, *, migrate_now: bool | None = None) -> Settings:
    """Configure logging, listen for a debugger when DEBUGPY_PORT is set, start the embedded
    PostgreSQL when no DATABASE_URL is set, and apply pending migrations unless
    AUTO_MIGRATE=false. Returns settings with the database URL."""
    logs.configure(settings.log_level, settings.log_format)
    if settings.debugpy_port is not None:
        listen_for_debugger(settings.debugpy_port)
    if settings.database_url is None:
        settings = settings.model_copy(update={"database_url": embedded.start(settings.data_dir)})

    if settings.auto_migrate if migrate_now is None else migrate_now:
        try:
            migrate.apply(settings.database)
        except psycopg.OperationalError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            sys.exit(f"menagerie: cannot reach the database to migrate it: {first_line}")
        except migrate.MigrationLocked as exc:
            sys.exit(f"menagerie: {exc}")
    return settings


def listen_for_debugger(port: int) -> None:
    """Let a debugger attach on 0.0.0.0:`port` (.vscode/launch.json); the process does not wait
    for it. debugpy is an optional dependency, imported only here."""
    try:
        import debugpy
    except ImportError:
        sys.exit("menagerie: DEBUGPY_PORT is set but debugpy is not installed: pip install debugpy")
    try:
        debugpy.listen(("0.0.0.0", port))
    except (OSError, RuntimeError) as exc:
        sys.exit(f"menagerie: debugpy cannot listen on port {port}: {exc}")
    log.warning("debugpy listening on port %d", port, extra={"action": "debugger_listening"})
