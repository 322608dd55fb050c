"""Applies the yoyo migrations in `migrations/` under yoyo's lock, so that several processes
starting at once migrate exactly once. The migrations are package data (`app/migrations`, a
link to the repository's folder, copied into the wheel)."""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path

from yoyo import get_backend, read_migrations
from yoyo.exceptions import LockTimeout

MIGRATIONS_DIR = Path(str(files("app") / "migrations"))

log = logging.getLogger(__name__)


class MigrationLocked(Exception):
    """Another process holds yoyo's lock for too long (or died holding it)."""


def yoyo_url(url: str) -> str:
    """yoyo reaches PostgreSQL through psycopg 3 only when the URL says so."""
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def migration_ids() -> list[str]:
    return [migration.id for migration in read_migrations(str(MIGRATIONS_DIR))]


def apply(url: str, *, lock_timeout: float = 60) -> list[str]:
    """Apply pending migrations; return the ids applied now."""
    backend = get_backend(yoyo_url(url))
    migrations = read_migrations(str(MIGRATIONS_DIR))
    try:
        with backend.lock(timeout=lock_timeout):
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
    except LockTimeout as exc:
        raise MigrationLocked(
            f"yoyo's migration lock is still held after {lock_timeout:.0f}s; if no other "
            "process is migrating, a killed one left it: run `yoyo break-lock` "
            "(or `python -m app migrate --break-lock`)"
        ) from exc
    finally:
        backend.connection.close()
    applied = [migration.id for migration in pending]
    if applied:
        log.info("applied migrations %s", ", ".join(applied), extra={"action": "migrated"})
    return applied


def break_lock(url: str) -> None:
    backend = get_backend(yoyo_url(url))
    try:
        backend.break_lock()
    finally:
        backend.connection.close()
