"""Image stores compared, in one run: PostgreSQL rows against an S3 bucket (moto's S3 server,
its own process on 127.0.0.1, standing in for MinIO or SeaweedFS).

* ``get``    - ``GET /images/{job}/{index}.png`` of 512×512 PNGs under wrk (32 connections,
  rotating over 20 images): rows (IMAGE_STORE=postgres), the bucket proxied
  (IMAGE_DELIVERY=proxy) and the bucket by redirect (IMAGE_DELIVERY=redirect: the server's
  307; the client's fetch from the bucket is not counted): requests/s and p99; and, for
  scale, the bucket itself answering one presigned GET (`bucket-direct`: moto's ceiling).
* ``worker`` - a real worker (4 slots) storing 1 MB images to each store: images/s over
  50 jobs of 4 images, the provider instant.
* ``size``   - the `images` table (with its TOAST and indexes) and the whole database after
  10,000 512×512 PNGs stored through each store, each in a fresh database.

Usage::

    python bench/stores.py [--measure get|worker|size|all] [--quick]

Prints one line per figure, then one JSON line. Needs wrk for ``get`` (Debian ``wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import boto3
import httpx
from peers import DEFAULT_DSN_ADMIN, fresh_database
from web import free_port, server, wrk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import migrate  # noqa: E402
from app.images import generations, s3, stores  # noqa: E402
from app.images.generate import kind as generate_kind  # noqa: E402
from app.images.providers import Image  # noqa: E402
from app.images.providers.render import render_png  # noqa: E402
from app.queue import jobs  # noqa: E402
from app.queue.worker import Timing, Worker  # noqa: E402
from app.settings import Settings  # noqa: E402

KEY_ID, SECRET = "bench", "bench"
BUCKET = "bench"
GET_IMAGES = 20
GET_SECONDS = (10, 2)
WORKER_JOBS = (50, 10)
SIZE_IMAGES = (10_000, 500)
MB = 1_000_000


@contextlib.contextmanager
def moto_server() -> Any:
    """moto's S3 server as its own process; its endpoint once it answers, with the bucket."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.TransportError):
                httpx.get(endpoint + "/moto-api/", timeout=1)
                break
            time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait(15)


def create_bucket(endpoint: str) -> None:
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    ).create_bucket(Bucket=BUCKET)


def settings_for(dsn: str, endpoint: str, store: str, delivery: str = "proxy") -> Settings:
    return Settings(
        _env_file=None,
        database_url=dsn,
        image_store=store,
        image_delivery=delivery,
        s3_bucket=BUCKET,
        s3_endpoint_url=endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        log_level="WARNING",
    )


def env_for(config: Settings) -> dict[str, str]:
    return {
        "IMAGE_STORE": config.image_store,
        "IMAGE_DELIVERY": config.image_delivery,
        "S3_BUCKET": BUCKET,
        "S3_ENDPOINT_URL": str(config.s3_endpoint_url),
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AUTO_MIGRATE": "false",
    }


@contextlib.asynccontextmanager
async def migrated(dsn_admin: str, name: str) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    async with fresh_database(dsn_admin, name) as dsn:
        await asyncio.to_thread(migrate.apply, dsn)
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=12)
        try:
            yield dsn, pool
        finally:
            await pool.close()


async def store_images(
    pool: asyncpg.Pool,
    store: stores.ImageStore,
    pngs: list[bytes],
    *,
    per_job: int = 10,
    concurrency: int = 8,
) -> list[tuple[UUID, int]]:
    """Store `pngs` as the images of claimed generations, through `store`, as a worker does;
    their (job, index)."""
    count = (len(pngs) + per_job - 1) // per_job
    created = await generations.create_many(pool, [generations.Request(per_job, "cat", 3)] * count)
    claimed = await jobs.claim(pool, worker_id="bench", wanted={"generate": count}, lease_seconds=3600)
    attempt = {job.id: job.attempts for job in claimed}
    places = [(job.id, index) for job in created for index in range(per_job)][: len(pngs)]
    gate = asyncio.Semaphore(concurrency)

    async def one(place: tuple[UUID, int], png: bytes) -> None:
        async with gate:
            job_id, index = place
            stored = await stores.save(
                pool, store, job_id=job_id, worker_id="bench", attempt=attempt[job_id], index=index, png=png
            )
            assert stored

    await asyncio.gather(*(one(place, png) for place, png in zip(places, pngs, strict=True)))
    return places


def rotating_script(paths: list[str]) -> str:
    """A wrk script requesting `paths` in turn."""
    listed = ", ".join(f'"{path}"' for path in paths)
    return f"paths = {{{listed}}}\ni = 0\nrequest = function()\n  i = i % #paths + 1\n  return wrk.format(nil, paths[i])\nend\n"


async def measure_get(dsn_admin: str, quick: bool) -> dict[str, Any]:
    pngs = [render_png("fox", seed=bytes(16), index=index, size=512) for index in range(GET_IMAGES)]
    figures: dict[str, Any] = {"png_bytes": sum(map(len, pngs)) // len(pngs)}
    with moto_server() as endpoint:
        create_bucket(endpoint)
        async with migrated(dsn_admin, "stores_get") as (dsn, pool):
            rows = await store_images(pool, stores.PostgresStore(), pngs)
            bucket = s3.stores_for(settings_for(dsn, endpoint, "s3")).writing
            objects = await store_images(pool, bucket, pngs)
            for mode, delivery, places in (
                ("postgres", "proxy", rows),
                ("s3-proxy", "proxy", objects),
                ("s3-redirect", "redirect", objects),
            ):
                config = settings_for(dsn, endpoint, "postgres" if mode == "postgres" else "s3", delivery)
                paths = [f"/images/{job_id}/{index}.png" for job_id, index in places]
                async with server(dsn, env_for(config)) as served:
                    async with httpx.AsyncClient(base_url=served.base) as http:
                        answer = await http.get(paths[0])
                        assert answer.status_code == (307 if delivery == "redirect" else 200), answer
                    if delivery == "redirect":  # the bucket itself, at the URL clients are sent to
                        figures["bucket-direct"] = await asyncio.to_thread(
                            wrk, answer.headers["location"], connections=32, seconds=GET_SECONDS[quick]
                        )
                    figures[mode] = await asyncio.to_thread(
                        wrk,
                        served.base + paths[0],
                        connections=32,
                        seconds=GET_SECONDS[quick],
                        script=rotating_script(paths),
                    )
    return figures


class MegabyteProvider:
    """Instant 1 MB images (random bytes behind a PNG signature: the stores do not look)."""

    name = "local"

    async def generate(
        self, *, prompt: str, model: str | None, animal: str, job_id: UUID, index: int
    ) -> Image:
        return Image(b"\x89PNG\r\n\x1a\n" + os.urandom(MB - 8), "image/png")


async def measure_worker(dsn_admin: str, quick: bool) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    count = WORKER_JOBS[quick]
    with moto_server() as endpoint:
        create_bucket(endpoint)
        for store in ("postgres", "s3"):
            async with migrated(dsn_admin, f"stores_worker_{store}") as (dsn, pool):
                config = settings_for(dsn, endpoint, store)
                kind = generate_kind(pool, MegabyteProvider(), image_stores=s3.stores_for(config))
                worker = Worker(
                    pool=pool,
                    listen_url=dsn,
                    kinds=[kind],
                    timing=Timing(poll_interval=3600, lease_seconds=30, shutdown_grace=0),
                )
                running = asyncio.create_task(worker.run())
                await asyncio.wait_for(worker.listener.connected.wait(), 10)
                started = time.perf_counter()
                created = await generations.create_many(pool, [generations.Request(4, "cat", 3)] * count)
                ids = [job.id for job in created]
                while True:
                    done = [await generations.get(pool, job_id=job_id) for job_id in ids]
                    if all(job is not None and job.status == "completed" for job in done):
                        break
                    assert not any(job is not None and job.status == "failed" for job in done)
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - started
                worker.stop()
                worker.stop()
                await asyncio.wait_for(running, 30)
                figures[store] = {"images_per_s": round(count * 4 / elapsed, 1), "seconds": round(elapsed, 2)}
    return figures


async def measure_size(dsn_admin: str, quick: bool) -> dict[str, Any]:
    count = SIZE_IMAGES[quick]
    distinct = [
        render_png(animal, seed=bytes(16), index=0, size=512) for animal in ("cat", "owl", "fox", "pig")
    ]
    pngs = [distinct[index % len(distinct)] for index in range(count)]
    figures: dict[str, Any] = {"images": count, "png_bytes": sum(map(len, distinct)) // len(distinct)}
    with moto_server() as endpoint:
        create_bucket(endpoint)
        for store in ("postgres", "s3"):
            async with migrated(dsn_admin, f"stores_size_{store}") as (dsn, pool):
                written = s3.stores_for(settings_for(dsn, endpoint, store)).writing
                empty = await pool.fetchval("SELECT pg_database_size(current_database())")
                await store_images(pool, written, pngs, per_job=10)
                await pool.execute("VACUUM ANALYZE images")
                table = await pool.fetchval("SELECT pg_total_relation_size('images')")
                database = await pool.fetchval("SELECT pg_database_size(current_database())")
                figures[store] = {
                    "images_table_mb": round(table / MB, 2),
                    "database_mb": round(database / MB, 1),
                    "database_growth_mb": round((database - empty) / MB, 1),
                }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", choices=("get", "worker", "size", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="small workloads: a smoke run")
    args = parser.parse_args()
    dsn_admin = os.environ.get("BENCH_DSN_ADMIN", DEFAULT_DSN_ADMIN)
    results: dict[str, Any] = {}
    if args.measure in ("get", "all"):
        results["get"] = asyncio.run(measure_get(dsn_admin, args.quick))
        for mode in ("postgres", "s3-proxy", "s3-redirect", "bucket-direct"):
            found = results["get"][mode]
            print(
                f"GET /images {mode:12} {found['requests_per_s']:8.0f} req/s  p99 {found.get('p99_ms', 0):7.2f} ms"
                f"  failed {found['failed']}"
            )
        base = results["get"]["postgres"]["requests_per_s"]
        for mode in ("s3-proxy", "s3-redirect"):
            print(f"  {mode} / postgres: {results['get'][mode]['requests_per_s'] / base:.2f}x")
    if args.measure in ("worker", "all"):
        results["worker"] = asyncio.run(measure_worker(dsn_admin, args.quick))
        for store, found in results["worker"].items():
            print(f"worker, 1 MB images, {store:8} {found['images_per_s']:7.1f} images/s")
    if args.measure in ("size", "all"):
        results["size"] = asyncio.run(measure_size(dsn_admin, args.quick))
        for store in ("postgres", "s3"):
            found = results["size"][store]
            print(
                f"after {results['size']['images']} images, {store:8} images table {found['images_table_mb']:8.2f} MB"
                f"  database {found['database_mb']:8.1f} MB (+{found['database_growth_mb']} MB)"
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
