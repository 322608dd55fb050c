"""Which async S3 client the `s3` image store uses: obstore against aiobotocore, put and get of
a 1 MB object against moto's S3 server (a real HTTP server on 127.0.0.1), in alternation, in
one process; and what each installs, measured in a fresh virtualenv of its own.

    python bench/s3_clients.py [--rounds 5] [--count 50] [--no-size]

Needs the `test` and `bench` extras (moto's server, aiobotocore) beside obstore.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

BODY = os.urandom(1_000_000)
KEY = "bench/1mb"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def with_obstore(
    endpoint: str, bucket: str
) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        bucket,
        endpoint=endpoint,
        region="us-east-1",
        access_key_id="bench",
        secret_access_key="bench",
        client_options={"allow_http": True},
    )

    async def put() -> None:
        await obstore.put_async(store, KEY, BODY, attributes={"Content-Type": "image/png"})

    async def get() -> None:
        result = await obstore.get_async(store, KEY)
        assert len(await result.bytes_async()) == len(BODY)

    async def close() -> None:
        return None

    return put, get, close


async def with_aiobotocore(
    endpoint: str, bucket: str
) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    from aiobotocore.session import get_session

    context = get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    client = await context.__aenter__()

    async def put() -> None:
        await client.put_object(Bucket=bucket, Key=KEY, Body=BODY, ContentType="image/png")

    async def get() -> None:
        answer = await client.get_object(Bucket=bucket, Key=KEY)
        async with answer["Body"] as stream:
            assert len(await stream.read()) == len(BODY)

    async def close() -> None:
        await context.__aexit__(None, None, None)

    return put, get, close


async def timed(operation: Callable[[], Awaitable[None]], count: int) -> float:
    """Milliseconds per operation over `count` sequential calls."""
    start = time.perf_counter()
    for _ in range(count):
        await operation()
    return (time.perf_counter() - start) * 1000 / count


async def measure(rounds: int, count: int) -> dict[str, dict[str, list[float]]]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="b",
            aws_secret_access_key="b",
        ).create_bucket(Bucket="bench")
        clients = {
            "obstore": await with_obstore(endpoint, "bench"),
            "aiobotocore": await with_aiobotocore(endpoint, "bench"),
        }
        figures: dict[str, dict[str, list[float]]] = {name: {"put": [], "get": []} for name in clients}
        for put, get, _ in clients.values():  # warm-up: connections, credentials
            await put()
            await get()
        for _ in range(rounds):
            for name, (put, get, _) in clients.items():
                figures[name]["put"].append(await timed(put, count))
                figures[name]["get"].append(await timed(get, count))
        for _, _, close in clients.values():
            await close()
        return figures
    finally:
        server.stop()


def install_size(package: str) -> tuple[float, int]:
    """MB that `pip install package` adds to an empty virtualenv, and how many distributions."""
    folder = Path(tempfile.mkdtemp(prefix="menagerie-size-"))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        site = next(folder.glob("lib/python*/site-packages"))
        before = sum(path.stat().st_size for path in site.rglob("*") if path.is_file())
        subprocess.run(
            [str(folder / "bin" / "pip"), "install", "-q", package], check=True, capture_output=True
        )
        after = sum(path.stat().st_size for path in site.rglob("*") if path.is_file())
        listed = subprocess.run(
            [str(folder / "bin" / "pip"), "list", "--format=freeze"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        return (after - before) / 1e6, len(listed) - 1  # less pip itself
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=50, help="operations per round and client")
    parser.add_argument("--no-size", action="store_true", help="skip the install sizes")
    args = parser.parse_args()
    figures = asyncio.run(measure(args.rounds, args.count))
    print(f"1 MB object, moto server, median of {args.rounds} rounds of {args.count} sequential operations")
    for name, measured in figures.items():
        put, get = statistics.median(measured["put"]), statistics.median(measured["get"])
        print(f"{name:12} put {put:7.2f} ms   get {get:7.2f} ms")
    ratio_put = statistics.median(figures["aiobotocore"]["put"]) / statistics.median(
        figures["obstore"]["put"]
    )
    ratio_get = statistics.median(figures["aiobotocore"]["get"]) / statistics.median(
        figures["obstore"]["get"]
    )
    print(f"aiobotocore / obstore: put {ratio_put:.2f}x, get {ratio_get:.2f}x")
    if not args.no_size:
        for package in ("obstore", "aiobotocore"):
            size, count = install_size(package)
            print(f"{package:12} installs {size:6.1f} MB in {count} distributions")


if __name__ == "__main__":
    main()
