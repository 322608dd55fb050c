"""What the HTTP provider path costs a worker: images per second of one worker process with the
`openai` provider against a fake model server that answers at once, beside the same worker on
the local renderer (no delay).

Each side gets a fresh database and one real worker process (`python -m app worker`, default
slots, PROVIDER_MAX_CONCURRENCY and pool), started and registered before the clock starts. Then
JOBS generations of IMAGES images each are created in one statement, and the clock stops when
the last one is finished. The fake (tests/fake_models.py) runs in a process of its own and
answers every call with a small PNG; on a 2-core machine it competes with the worker and
PostgreSQL for the CPU, as the local renderer's drawing does inside the worker.

Usage::

    python bench/providers.py [--quick] [--jobs N] [--images N] [--size PIXELS]

Prints one JSON line: images/s of each side and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
from peers import DEFAULT_DSN_ADMIN, fresh_database

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import migrate  # noqa: E402
from app.images import generations  # noqa: E402

JOBS = (200, 30)  # full, quick
IMAGES = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"providers bench: {what} within {timeout:g}s")
        await asyncio.sleep(0.05)


async def side(dsn_admin: str, provider: str, *, jobs: int, images: int, size: int) -> dict[str, Any]:
    """Images per second of one worker process on `provider` ("local" or "openai")."""
    async with fresh_database(dsn_admin, f"providers_{provider}") as dsn:
        migrate.apply(dsn)
        env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "AUTO_MIGRATE": "false",
            "IMAGE_PROVIDER": provider,
            "IMAGE_PROVIDER_DELAY": "0",
            "IMAGE_SIZE": str(size),
            "WORKER_POLL_INTERVAL": "3600",
            "LOG_LEVEL": "WARNING",
            "RETENTION_DAYS": "0",
        }
        children: list[subprocess.Popen[bytes]] = []
        model = None
        if provider != "local":
            port = free_port()
            children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tests.fake_models", "--port", str(port)],
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                )
            )
            model = "gpt-image-1"
            env |= {
                "IMAGE_MODEL": model,
                "OPENAI_API_KEY": "bench",
                "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
            }
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:
            children.append(subprocess.Popen([sys.executable, "-m", "app", "worker"], cwd=ROOT, env=env))

            async def registered() -> bool:
                return bool(await pool.fetchval("SELECT count(*) FROM workers"))

            await wait_until(registered, 30, "the worker did not register")
            if provider != "local":
                await asyncio.sleep(0.5)  # the fake's own start-up
            requests = [
                generations.Request(images, "owl", 3, prompt="a cute owl", provider=provider, model=model)
            ] * jobs
            started = time.perf_counter()
            await generations.create_many(pool, requests)

            async def finished() -> bool:
                return bool(await pool.fetchval("SELECT count(*) FROM finished_jobs") == jobs)

            await wait_until(finished, 600, "the jobs did not finish")
            elapsed = time.perf_counter() - started
            failed = await pool.fetchval("SELECT count(*) FROM finished_jobs WHERE status <> 'completed'")
            stored = await pool.fetchval("SELECT count(*) FROM images")
        finally:
            await pool.close()
            for child in children:
                child.terminate()
            for child in children:
                child.wait(30)
    if failed or stored != jobs * images:
        raise SystemExit(f"providers bench: {provider}: {failed} jobs failed, {stored} images stored")
    return {"images": stored, "seconds": round(elapsed, 3), "images_per_s": round(stored / elapsed, 1)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small workload: a smoke test")
    parser.add_argument("--jobs", type=int, help="generations per side")
    parser.add_argument("--images", type=int, default=IMAGES, help="images per generation")
    parser.add_argument("--size", type=int, default=512, help="the local renderer's IMAGE_SIZE")
    parser.add_argument("--dsn-admin", default=os.environ.get("BENCH_DSN_ADMIN", DEFAULT_DSN_ADMIN))
    args = parser.parse_args()
    jobs = args.jobs or JOBS[args.quick]
    result: dict[str, Any] = {"measure": "providers", "jobs": jobs, "images_per_job": args.images}
    for provider in ("local", "openai"):
        result[provider] = await side(args.dsn_admin, provider, jobs=jobs, images=args.images, size=args.size)
    result["openai_over_local"] = round(result["openai"]["images_per_s"] / result["local"]["images_per_s"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
