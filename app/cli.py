"""The `menagerie` command (also `python -m app`): `server`, `worker`, `migrate`, `run`.

menagerie server      the HTTP API (uvicorn with uvloop and httptools)
menagerie worker      one worker; start as many as you like, on any host
menagerie migrate     apply pending migrations (--break-lock first clears a killed one's lock);
                      with S3_BUCKET set, check the bucket (S3_CREATE_BUCKET=true creates it)
menagerie images move-to-s3   move images kept in PostgreSQL to S3_BUCKET (resumable)
menagerie run         server and one worker (and an embedded PostgreSQL when DATABASE_URL
                      is unset): what `make run` does; Ctrl-C stops them all
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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


def check_image_store(config: settings.Settings) -> None:
    """Stop with one line (exit 2) unless the bucket, when one is configured, answers."""
    from app.images import s3, stores

    async def failure() -> str | None:
        try:
            await s3.check_at_start(config)
        except (stores.StoreMisconfigured, settings.SettingError) as exc:
            return str(exc)
        return None

    found = asyncio.run(failure())
    # obstore aborts the process when a client is freed during interpreter exit: free the
    # check's now (its failure's traceback made a cycle), not then.
    gc.collect()
    if found is not None:
        settings.stop(found)


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


def move_images(config: settings.Settings, *, batch_size: int, pause: float) -> int:
    """`images move-to-s3`: 0 once every image is in the bucket, 130 when interrupted (run it
    again to go on), 1 when the bucket stopped answering."""
    from app import db
    from app.images import moving, s3, stores

    bucket = s3.stores_for(config).by_name.get(s3.NAME)
    if not isinstance(bucket, s3.S3Store):
        settings.stop("images move-to-s3 needs S3_BUCKET")

    async def move() -> int:
        pool = await db.create_pool(config.database, size=2, application_name="menagerie-images")
        try:
            return await moving.move_to_s3(pool, bucket, batch_size=batch_size, pause=pause)
        finally:
            await pool.close()

    try:
        moved = asyncio.run(move())
    except KeyboardInterrupt:
        print("menagerie: interrupted; run it again to move the rest", file=sys.stderr)
        return 130
    except stores.StoreUnavailable as exc:
        print(f"menagerie: {exc}; run it again to move the rest", file=sys.stderr)
        return 1
    print(f"menagerie: moved {moved} images to {bucket.config.where()}", file=sys.stderr)
    return 0


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
    images = commands.add_parser("images", help="manage stored images").add_subparsers(
        dest="action", required=True
    )
    moving = images.add_parser(
        "move-to-s3",
        help="move images kept in PostgreSQL to S3_BUCKET (resumable: run it again after Ctrl-C)",
    )
    moving.add_argument("--batch-size", type=int, default=50, help="images per batch (default 50)")
    moving.add_argument("--pause", type=float, default=0.0, help="seconds to sleep between batches")
    args = parser.parse_args(argv)
    config = settings.load()
    if args.command == "run":
        return run_all(config)
    if args.command == "server":
        config = prepare(config)
        check_image_store(config)
        return serve_api(config)
    if args.command == "worker":
        config = prepare(config)
        check_image_store(config)
        return run_worker(config)
    if args.command == "images":
        config = prepare(config)
        check_image_store(config)
        return move_images(config, batch_size=args.batch_size, pause=args.pause)
    config = prepare(config, migrate_now=False)
    if args.break_lock:
        migrate.break_lock(config.database)
    applied = migrate.apply(config.database)
    print(f"menagerie: applied {len(applied)} migration(s)" if applied else "menagerie: up to date")
    check_image_store(config)  # and the bucket, when one is set: created once with S3_CREATE_BUCKET
    return 0
