"""The `menagerie` command (also `python -m app`): `server`, `worker`, `migrate`, `run`.

menagerie server      the HTTP API (uvicorn with uvloop and httptools)
menagerie worker      one worker; start as many as you like, on any host
menagerie migrate     apply pending migrations (--break-lock first clears a killed one's lock)
menagerie run         server and one worker (and an embedded PostgreSQL when DATABASE_URL
                      is unset): what `make run` does; Ctrl-C stops them all
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from app import migrate, settings
from app.process import prepare


def serve_api(config: settings.Settings) -> int:
    import uvicorn

    from app.api import create_app

    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        backlog=2048,
        timeout_keep_alive=5,  # idle keep-alive connections close after 5 s
        timeout_graceful_shutdown=10,  # then open event streams are cut on shutdown
    )
    return 0


def run_worker(config: settings.Settings) -> int:
    import uvloop

    from app import registry

    try:
        uvloop.run(registry.serve_worker(config))
    except settings.SettingError as exc:
        settings.stop(str(exc))
    return 0


def run_all(config: settings.Settings) -> int:
    """Start the server and one worker (and the embedded PostgreSQL when DATABASE_URL is
    unset); on Ctrl-C or SIGTERM stop them all, in order, and return the exit code."""
    config = prepare(config.model_copy(update={"debugpy_port": None}))
    env = {**os.environ, "DATABASE_URL": config.database, "AUTO_MIGRATE": "false"}
    # One port cannot serve two debuggees: with DEBUGPY_PORT set, only the worker listens.
    server_env = {key: value for key, value in env.items() if key != "DEBUGPY_PORT"}
    children = [
        subprocess.Popen([sys.executable, "-m", "app", command], env=child_env, start_new_session=True)
        for command, child_env in (("server", server_env), ("worker", env))
    ]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    announced = False
    while not stopping and all(child.poll() is None for child in children):
        if not announced and _answers(f"http://{_reachable(config.host)}:{config.port}/healthz"):
            print(f"menagerie: serving http://{config.host}:{config.port} (Ctrl-C stops)", file=sys.stderr)
            announced = True
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    codes = [child.wait() for child in children]
    return 0 if stopping else max(code for code in codes if code is not None) or 1


def _reachable(host: str) -> str:
    """Where to reach a server listening on `host` from this machine."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="menagerie", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("server", help="serve the HTTP API")
    commands.add_parser("worker", help="run one worker")
    commands.add_parser("run", help="start the server and a worker")
    migrating = commands.add_parser("migrate", help="apply pending migrations")
    migrating.add_argument(
        "--break-lock", action="store_true", help="first clear a lock left by a killed process"
    )
    args = parser.parse_args(argv)
    config = settings.load()
    if args.command == "run":
        return run_all(config)
    if args.command == "server":
        return serve_api(prepare(config))
    if args.command == "worker":
        from app import registry

        try:
            registry.endpoint(config)  # the provider's key, checked before anything starts
        except settings.SettingError as exc:
            settings.stop(str(exc))
        return run_worker(prepare(config))
    config = prepare(config, migrate_now=False)
    if args.break_lock:
        migrate.break_lock(config.database)
    applied = migrate.apply(config.database)
    print(f"menagerie: applied {len(applied)} migration(s)" if applied else "menagerie: up to date")
    return 0
