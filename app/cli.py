"""The `menagerie` command (also `python -m app`): `server`, `worker`, `migrate`, `run`.

menagerie server      the HTTP API (uvicorn with uvloop and httptools)
menagerie worker      one worker; start as many as you like, on any host
menagerie migrate     apply pending migrations (--break-lock first clears a killed one's lock);
                      with S3_BUCKET set, check the bucket (S3_CREATE_BUCKET=true creates it)
menagerie images move-to-s3   move images kept in PostgreSQL to S3_BUCKET (resumable)
menagerie run         server and one worker (and an embedded PostgreSQL when DATABASE_URL
                      is unset): what `make run` does; Ctrl-C stops them all
menagerie keys        create, list and revoke API keys; rotate a key's webhook secret
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
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import asyncpg

from app import keys, migrate, settings
from app.process import prepare

T = TypeVar("T")


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


def settle_heap() -> None:
    """Take what the process has built so far (modules, the app, its OpenAPI document: some
    hundred thousand objects that live as long as it does) out of the garbage collector's
    sight. Otherwise each full collection walks all of them: under POST load a server ran
    about three a second, each stopping every request for up to 39 ms, which made POST's p99
    4.4x its p50; frozen, the same run had p99 1.6x p50 and 11 % more requests per second."""
    gc.collect()
    gc.freeze()


def serve_api(config: settings.Settings) -> int:
    import uvicorn

    from app.api import create_app

    app = create_app(config)
    settle_heap()
    uvicorn.run(
        app,
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
    banner = dev_key_banner(config) if config.auth == "keys" else ""
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
            if banner:  # last, where it is seen
                print(banner, file=sys.stderr)
            announced = True
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    codes = [child.wait() for child in children]
    return 0 if stopping else max(code for code in codes if code is not None) or 1


DEV_KEY = "dev"
DEV_KEY_FILE = "dev-key"


def dev_key_banner(config: settings.Settings) -> str:
    """The admin key `dev` for a local run, made at the first start and kept in DATA_DIR
    (mode 0600), ready to paste. Made again when the kept one no longer works (revoked, or
    another database)."""
    kept = Path(config.data_dir) / DEV_KEY_FILE
    token = kept.read_text().strip() if kept.exists() else None

    async def ensure(conn: asyncpg.Connection) -> str:
        if token is not None:
            secret = await keys.server_secret(conn, keys.KEY_HASH_SECRET)
            if await keys.authenticate(conn, digest=keys.key_hash(secret, token)) is not None:
                return token
        try:
            made, _ = await keys.create(
                conn, name=DEV_KEY, admin=True, rate=DEFAULT_RATE, burst=DEFAULT_BURST, max_pending=None
            )
        except keys.KeyExists:  # its file was lost: replace it
            await keys.revoke(conn, name=DEV_KEY)
            made, _ = await keys.create(
                conn, name=DEV_KEY, admin=True, rate=DEFAULT_RATE, burst=DEFAULT_BURST, max_pending=None
            )
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.unlink(missing_ok=True)
        descriptor = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(made + "\n")
        return made

    token = with_connection(config.database, ensure)
    return (
        f"menagerie: the admin key {DEV_KEY!r} (kept in {kept}); to use it in this shell:\n"
        f"export MENAGERIE_KEY={token}"
    )


def with_connection(url: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run `work` on one connection to `url`, from synchronous code."""

    async def run() -> T:
        conn = await asyncpg.connect(url)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


DEFAULT_RATE = 10.0
DEFAULT_BURST = 20


def rate(text: str) -> float:
    """`10`, `10/s` or `2.5/s`: requests per second, above 0."""
    value = float(text.strip().removesuffix("/s"))
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(text)
    return value


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def manage_keys(config: settings.Settings, args: argparse.Namespace) -> int:
    """`keys create|list|revoke|rotate-webhook-secret`; prints a new key (and its webhook
    secret) once, never stores the key."""

    async def create(conn: asyncpg.Connection) -> int:
        shown_secret, secret = keys.new_webhook_secret()
        try:
            token, key = await keys.create(
                conn,
                name=args.name,
                admin=args.admin,
                rate=args.rate,
                burst=args.burst,
                max_pending=args.max_pending,
                webhook_secret=secret,
            )
        except keys.KeyExists:
            print(f"menagerie: a live key is already named {args.name!r} (revoke it first)", file=sys.stderr)
            return 1
        except asyncpg.CheckViolationError:
            print(
                f"menagerie: {args.name!r} is not a key name (letters, digits, _.@-, 64 at most)",
                file=sys.stderr,
            )
            return 2
        kind = "admin key" if key.admin else "key"
        print(f"menagerie: {kind} {key.name!r} made; it is shown only now:", file=sys.stderr)
        print(token)
        print(
            f"menagerie: its webhook secret (verifies its jobs' webhooks), shown only now: {shown_secret}",
            file=sys.stderr,
        )
        return 0

    async def rotate(conn: asyncpg.Connection) -> int:
        shown_secret, secret = keys.new_webhook_secret()
        try:
            await keys.rotate_webhook_secret(conn, name=args.name, secret=secret, overlap=args.overlap)
        except keys.NoSuchKey:
            print(f"menagerie: no live key is named {args.name!r}", file=sys.stderr)
            return 1
        print(
            f"menagerie: {args.name!r} has a new webhook secret, shown only now; deliveries are signed "
            f"with both it and the old one for {args.overlap:g} s:",
            file=sys.stderr,
        )
        print(shown_secret)
        return 0

    async def listing(conn: asyncpg.Connection) -> int:
        rows = await keys.list_all(conn)
        print(
            f"{'name':<20} {'prefix':<13} {'admin':<5} {'rate/s':>7} {'burst':>6} {'pending':>7}  "
            f"{'created':<20} {'last used':<20} revoked"
        )
        for row in rows:
            print(
                f"{row['name']:<20} {row['prefix']:<13} {'yes' if row['admin'] else 'no':<5} "
                f"{row['rate']:>7g} {row['burst']:>6} {row['max_pending'] or '-':>7}  "
                f"{_when(row['created_at']):<20} {_when(row['last_used_at']):<20} {_when(row['revoked_at'])}"
            )
        return 0

    async def revoke(conn: asyncpg.Connection) -> int:
        try:
            prefix = await keys.revoke(conn, name=args.name)
        except keys.NoSuchKey:
            print(f"menagerie: no live key is named {args.name!r}", file=sys.stderr)
            return 1
        print(f"menagerie: revoked {args.name!r} ({prefix}…); servers refuse it within 5 s", file=sys.stderr)
        return 0

    work = {"create": create, "list": listing, "revoke": revoke, "rotate-webhook-secret": rotate}[args.action]
    return with_connection(config.database, work)


def _when(moment: object) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


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

    async def move(to: s3.S3Store) -> int:
        pool = await db.create_pool(config.database, size=2, application_name="menagerie-images")
        try:
            return await moving.move_to_s3(pool, to, batch_size=batch_size, pause=pause)
        finally:
            await pool.close()

    outcome: str | None = None
    try:
        moved = asyncio.run(move(bucket))
    except KeyboardInterrupt:
        outcome = "interrupted"
    except stores.StoreUnavailable as exc:
        outcome = str(exc)
    where = bucket.config.where()
    del bucket
    gc.collect()  # free the bucket's client now: obstore aborts if it is freed at exit
    if outcome is not None:
        print(f"menagerie: {outcome}; run it again to move the rest", file=sys.stderr)
        return 130 if outcome == "interrupted" else 1
    print(f"menagerie: moved {moved} images to {where}", file=sys.stderr)
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
    managing = commands.add_parser("keys", help="create, list and revoke API keys")
    actions = managing.add_subparsers(dest="action", required=True)
    creating = actions.add_parser("create", help="make a key and print it (once)")
    creating.add_argument("name", help="who the key is for (letters, digits, _.@-)")
    creating.add_argument("--admin", action="store_true", help="sees and cancels every job")
    creating.add_argument(
        "--rate", type=rate, default=DEFAULT_RATE, help=f"requests per second, e.g. 10/s ({DEFAULT_RATE:g})"
    )
    creating.add_argument(
        "--burst",
        type=positive,
        default=DEFAULT_BURST,
        help=f"requests at once above the rate ({DEFAULT_BURST})",
    )
    creating.add_argument(
        "--max-pending", type=positive, default=None, help="pending jobs at once (no limit)"
    )
    actions.add_parser("list", help="every key: name, prefix, admin, limits, created, last used, revoked")
    revoking = actions.add_parser("revoke", help="stop a key working (within 5 s everywhere)")
    revoking.add_argument("name")
    rotating = actions.add_parser(
        "rotate-webhook-secret",
        help="give a key a new webhook secret (printed once); the old one signs too for a while",
    )
    rotating.add_argument("name")
    rotating.add_argument(
        "--overlap",
        type=settings.parse_duration,
        default=86_400.0,
        help="how long the old secret keeps signing beside the new one, e.g. 1h (24h)",
    )
    args = parser.parse_args(argv)
    config = settings.load()
    if args.command == "keys":
        return manage_keys(prepare(config), args)
    if args.command == "run":
        return run_all(config)
    if args.command == "server":
        config = prepare(config)
        check_image_store(config)
        return serve_api(config)
    if args.command == "worker":
        from app import registry

        try:
            registry.endpoint(config)  # the provider's key, checked before anything starts
        except settings.SettingError as exc:
            settings.stop(str(exc))
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
