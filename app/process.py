"""What every menagerie process does before its real work: logging, the database, migrations."""

from __future__ import annotations

import sys

import psycopg

from app import embedded, logs, migrate
from app.settings import Settings


def prepare(settings: Settings, *, migrate_now: bool | None = None) -> Settings:
    """Configure logging, start the embedded PostgreSQL when no DATABASE_URL is set, and apply
    pending migrations unless AUTO_MIGRATE=false. Returns settings with the database URL."""
    logs.configure(settings.log_level)
    if settings.database_url is None:
        settings = settings.model_copy(update={"database_url": embedded.start(settings.data_dir)})
    assert settings.database_url is not None
    if settings.auto_migrate if migrate_now is None else migrate_now:
        try:
            migrate.apply(settings.database_url)
        except psycopg.OperationalError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            sys.exit(f"menagerie: cannot reach the database to migrate it: {first_line}")
        except migrate.MigrationLocked as exc:
            sys.exit(f"menagerie: {exc}")
    return settings
