"""`python -m app run` starts everything; `python -m app migrate` applies migrations."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from app import migrate, settings
from app.process import prepare

ROOT = Path(__file__).resolve().parent.parent


def run_all(config: settings.Settings) -> int:
    """Start the server and one worker (and the embedded PostgreSQL when DATABASE_URL is
    unset); on Ctrl-C or SIGTERM stop them all, in order, and return the exit code."""
    config = prepare(config.model_copy(update={"debugpy_port": None}))
    env = {**os.environ, "DATABASE_URL": config.database_url or "", "AUTO_MIGRATE": "false"}
    # One port cannot serve two debuggees: with DEBUGPY_PORT set, only the worker listens.
    server_env = {key: value for key, value in env.items() if key != "DEBUGPY_PORT"}
    children = [
        subprocess.Popen([sys.executable, str(ROOT / script)], env=child_env, start_new_session=True)
        for script, child_env in (("server.py", server_env), ("worker.py", env))
    ]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(
        f"menagerie: serving http://{config.host}:{config.port} (Ctrl-C stops)", file=sys.stderr
    )
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    codes = [child.wait() for child in children]
    return 0 if stopping else max(code for code in codes if code is not None) or 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="start the server and a worker")
    migrating = commands.add_parser("migrate", help="apply pending migrations")
    migrating.add_argument(
        "--break-lock", action="store_true", help="first clear a lock left by a killed process"
    )
    args = parser.parse_args()
    config = settings.load()
    if args.command == "run":
        return run_all(config)
    config = prepare(config, migrate_now=False)
    assert config.database_url is not None
    if args.break_lock:
        migrate.break_lock(config.database_url)
    applied = migrate.apply(config.database_url)
    print(f"menagerie: applied {len(applied)} migration(s)" if applied else "menagerie: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
