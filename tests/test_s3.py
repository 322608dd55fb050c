"""The `s3` image store against a real S3 server: moto's server mode (`ThreadedMotoServer`, an
HTTP server on 127.0.0.1 and a free port), one bucket per test. Stopping it and starting it
again on the same port keeps its objects: that is how an outage is made."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import timedelta
from uuid import UUID

import asyncpg
import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from pydantic import SecretStr

from app.images import generate, s3, stores
from app.images.providers.local import LocalProvider
from app.images.stores import Placement
from app.queue import jobs
from app.queue.maintenance import delete_finished
from app.settings import Settings
from tests.support import (
    TEST_BACKOFF,
    api_client,
    free_port,
    insert_generations,
    set_status,
    wait_for,
    wait_until_terminal,
)

KEY_ID, SECRET = "testing", "testing"
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class S3Server:
    """moto's S3 server on one port for the whole session; `stop()` and `start()` make an
    outage (its objects stay: they live in this process)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self):  # boto3's client: the test's own view of the bucket
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
        )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A new empty bucket for this test."""
    name = f"menagerie-{secrets.token_hex(4)}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_settings(settings: Settings, s3_server: S3Server, bucket: str) -> Settings:
    return settings.model_copy(
        update={
            "image_store": "s3",
            "s3_bucket": bucket,
            "s3_endpoint_url": s3_server.endpoint,
            "aws_access_key_id": KEY_ID,
            "aws_secret_access_key": SecretStr(SECRET),
            "job_max_attempts": 10,
        }
    )


def s3_env(config: Settings) -> dict[str, str]:
    """The environment a spawned process needs for `config`'s database and bucket."""
    return {
        "DATABASE_URL": config.database,
        "AUTO_MIGRATE": "false",
        "IMAGE_STORE": "s3",
        "S3_BUCKET": str(config.s3_bucket),
        "S3_ENDPOINT_URL": str(config.s3_endpoint_url),
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
    }


def bucket_keys(s3_server: S3Server, bucket: str) -> list[str]:
    listed = s3_server.client().list_objects_v2(Bucket=bucket)
    return sorted(entry["Key"] for entry in listed.get("Contents", []))


@pytest.fixture
async def s3_worker(start_worker, pool, s3_settings):
    """Start a worker for generations storing to the test's bucket, with quick retries."""

    async def start():
        kind = generate.kind(
            pool, LocalProvider(delay=0, size=64), image_stores=s3.stores_for(s3_settings), db_patience=5
        )
        return await start_worker(replace(kind, backoff=TEST_BACKOFF))

    return start


@pytest.fixture
async def s3_client(s3_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(s3_settings) as http:
        yield http


async def completed_job(http: httpx.AsyncClient, num_images: int = 2) -> dict:
    created = await http.post("/generations", json={"numImages": num_images, "animal": "fox"})
    job = await wait_until_terminal(http, created.headers["location"])
    assert job["status"] == "completed", job
    return job


def path_of(url: str) -> str:
    return url.removeprefix("http://menagerie.test")


async def test_a_completed_jobs_images_are_objects_with_their_bytes_type_and_sha256(
    s3_client, s3_worker, s3_server, bucket, pool
):
    """With IMAGE_STORE=s3 each image is the object {prefix}{job}/{index}.{attempt} with the
    image's bytes, content type image/png and its sha256 in the metadata; the row records the
    store, key, size and sha256 and keeps no bytes; the imageUrls serve those bytes (proxy)
    with the sha256 as ETag, and If-None-Match answers 304."""
    await s3_worker()
    job = await completed_job(s3_client)
    rows = await pool.fetch(
        "SELECT idx, store, key, png, size, sha256 FROM images WHERE job_id = $1 ORDER BY idx",
        UUID(job["jobId"]),
    )
    assert [row["key"] for row in rows] == [f"images/{job['jobId']}/{index}.1" for index in (0, 1)]
    assert bucket_keys(s3_server, bucket) == [row["key"] for row in rows]
    for row, url in zip(rows, job["imageUrls"], strict=True):
        assert (row["store"], row["png"]) == ("s3", None)
        found = s3_server.client().get_object(Bucket=bucket, Key=row["key"])
        data = found["Body"].read()
        assert found["ContentType"] == "image/png"
        assert found["Metadata"]["sha256"] == row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["size"] == len(data) and data.startswith(b"\x89PNG")
        served = await s3_client.get(path_of(url))
        assert served.status_code == 200 and served.content == data
        assert served.headers["etag"] == f'"{row["sha256"]}"'
        assert served.headers["content-type"] == "image/png"
        assert "immutable" in served.headers["cache-control"]
        again = await s3_client.get(path_of(url), headers={"If-None-Match": served.headers["etag"]})
        assert again.status_code == 304


async def test_redirect_mode_answers_307_to_a_presigned_url_that_serves_the_bytes(
    s3_settings, s3_worker, s3_server, bucket
):
    """With IMAGE_DELIVERY=redirect an object image is a 307 to a presigned URL of the bucket
    valid for S3_PRESIGN_TTL seconds; a plain HTTP client following it gets the same bytes
    the proxy serves."""
    await s3_worker()
    redirecting = s3_settings.model_copy(update={"image_delivery": "redirect", "s3_presign_ttl": 600})
    async with api_client(redirecting) as http:
        job = await completed_job(http, num_images=1)
        answer = await http.get(path_of(job["imageUrls"][0]))
    assert answer.status_code == 307
    location = answer.headers["location"]
    assert location.startswith(f"{s3_server.endpoint}/{bucket}/images/{job['jobId']}/0.1?")
    assert "X-Amz-Expires=600" in location
    async with httpx.AsyncClient() as plain:
        fetched = await plain.get(location)
    async with api_client(s3_settings) as http:
        proxied = await http.get(path_of(job["imageUrls"][0]))
    assert fetched.status_code == 200 and fetched.content == proxied.content
    assert fetched.content.startswith(b"\x89PNG")


async def test_old_images_in_rows_keep_serving_beside_objects(s3_client, s3_worker, s3_settings, pool):
    """Mixed history: an image stored in its row before IMAGE_STORE became s3 is still served
    from the row, beside images now kept as objects; switched back to postgres (the bucket
    still configured), both still serve."""
    [old] = await insert_generations(pool, 1)
    await set_status(pool, [old], "processing")
    png = b"\x89PNG old bytes"
    assert await stores.save(
        pool, stores.PostgresStore(), job_id=old, worker_id="w-test", attempt=1, index=0, png=png
    )
    await s3_worker()
    job = await completed_job(s3_client, num_images=1)
    assert (await s3_client.get(f"/images/{old}/0.png")).content == png
    assert (await s3_client.get(path_of(job["imageUrls"][0]))).status_code == 200
    kinds = await pool.fetch("SELECT store FROM images ORDER BY store")
    assert [row["store"] for row in kinds] == ["postgres", "s3"]
    back = s3_settings.model_copy(update={"image_store": "postgres"})  # switched back, bucket kept
    async with api_client(back) as http:
        assert (await http.get(path_of(job["imageUrls"][0]))).content.startswith(b"\x89PNG")
        assert (await http.get(f"/images/{old}/0.png")).content == png


async def test_retention_deletes_objects_with_their_rows(
    s3_client, s3_worker, s3_settings, s3_server, bucket, pool
):
    """Retention deletes a finished job's image rows and, once that commits, its objects;
    a job that is kept keeps both."""
    await s3_worker()
    old, kept = await completed_job(s3_client), await completed_job(s3_client)
    await pool.execute(
        "UPDATE finished_jobs SET finished_at = now() - interval '10 days' WHERE id = $1", UUID(old["jobId"])
    )
    kind = generate.kind(pool, LocalProvider(delay=0, size=64), image_stores=s3.stores_for(s3_settings))
    assert await delete_finished(pool, older_than_days=7, forget={kind.name: kind.forget}, pause=0) == 1
    assert await pool.fetchval("SELECT count(*) FROM images WHERE job_id = $1", UUID(old["jobId"])) == 0
    assert bucket_keys(s3_server, bucket) == [f"images/{kept['jobId']}/{index}.1" for index in (0, 1)]
    assert await pool.fetchval("SELECT count(*) FROM images") == 2


async def test_objects_retention_could_not_delete_go_at_the_next_orphan_sweep(
    s3_client, s3_worker, s3_settings, s3_server, bucket, pool
):
    """With the store down, retention still deletes the rows (none is left pointing at an
    object) and leaves the objects; the next orphan sweep, once the store is back, deletes
    them."""
    await s3_worker()
    old = await completed_job(s3_client)
    await pool.execute(
        "UPDATE finished_jobs SET finished_at = now() - interval '10 days' WHERE id = $1", UUID(old["jobId"])
    )
    image_stores = s3.stores_for(s3_settings)
    kind = generate.kind(pool, LocalProvider(delay=0, size=64), image_stores=image_stores)
    s3_server.stop()
    try:
        assert await delete_finished(pool, older_than_days=7, forget={kind.name: kind.forget}, pause=0) == 1
    finally:
        s3_server.start()
    assert await pool.fetchval("SELECT count(*) FROM images") == 0
    assert len(bucket_keys(s3_server, bucket)) == 2
    bucket_store = image_stores.writing
    assert isinstance(bucket_store, s3.S3Store)
    assert await s3.delete_orphans(pool, bucket_store, older_than=0) == 2
    assert bucket_keys(s3_server, bucket) == []


async def test_the_orphan_sweep_deletes_what_a_worker_that_lost_its_job_wrote(
    s3_settings, s3_server, bucket, pool
):
    """A worker whose job was reclaimed still writes its object (its own key: the owner's
    bytes are safe) but no row; the orphan sweep deletes that object once it is old enough,
    and never an object a row points at; while another worker sweeps, it skips."""
    bucket_store = s3.stores_for(s3_settings).writing
    [job_id] = await insert_generations(pool, 1, num_images=2)
    [first] = await jobs.claim(pool, worker_id="w1", wanted={"generate": 1}, lease_seconds=30)
    await pool.execute("UPDATE job_queue SET worker_id = 'w2', attempts = 2 WHERE id = $1", job_id)
    assert await stores.save(
        pool, bucket_store, job_id=job_id, worker_id="w2", attempt=2, index=0, png=b"owner"
    )
    assert not await stores.save(
        pool, bucket_store, job_id=job_id, worker_id="w1", attempt=first.attempts, index=0, png=b"late"
    )
    assert bucket_keys(s3_server, bucket) == [f"images/{job_id}/0.1", f"images/{job_id}/0.2"]
    assert isinstance(bucket_store, s3.S3Store)

    assert await s3.delete_orphans(pool, bucket_store) == 0  # younger than an hour: left alone
    async with pool.acquire() as conn, conn.transaction():  # another worker sweeping
        await conn.execute("SELECT pg_advisory_xact_lock($1)", s3.ORPHAN_LOCK)
        assert await s3.delete_orphans(pool, bucket_store, older_than=0) == 0
    assert await s3.delete_orphans(pool, bucket_store, older_than=0) == 1
    assert bucket_keys(s3_server, bucket) == [f"images/{job_id}/0.2"]
    assert s3_server.client().get_object(Bucket=bucket, Key=f"images/{job_id}/0.2")["Body"].read() == b"owner"


async def test_an_outage_of_the_store_retries_the_job_and_serving_answers_503_until_it_is_back(
    s3_client, s3_worker, s3_server, pool
):
    """With the S3 server stopped mid-job, storing is a transient failure: the job is retried
    (not failed); serving an object image and /readyz answer 503 with Retry-After meanwhile.
    Once the server is back the job completes and every image, old and new, serves."""
    await s3_worker()
    before = await completed_job(s3_client, num_images=1)
    s3_server.stop()
    try:
        created = await s3_client.post("/generations", json={"numImages": 2})
        location = created.headers["location"]

        async def failed_once() -> bool:
            job = (await s3_client.get(location)).json()
            return job["error"] is not None and "image 0" in job["error"]

        await wait_for(failed_once, timeout=30)
        job = (await s3_client.get(location)).json()
        assert job["status"] in ("pending", "processing")
        served = await s3_client.get(path_of(before["imageUrls"][0]))
        assert served.status_code == 503 and int(served.headers["retry-after"]) > 0
        assert served.json()["type"] == "/problems/store-unavailable"
        ready = await s3_client.get("/readyz")
        assert ready.status_code == 503 and "retry-after" in ready.headers
    finally:
        s3_server.start()
    job = await wait_until_terminal(s3_client, location, timeout=60)
    assert job["status"] == "completed" and job["attempts"] > 1
    for url in [*before["imageUrls"], *job["imageUrls"]]:
        answer = await s3_client.get(path_of(url))
        assert answer.status_code == 200 and answer.content.startswith(b"\x89PNG")
    assert (await s3_client.get("/readyz")).json() == {"status": "ready", "imageStore": "s3"}


async def add_row_images(pool: asyncpg.Pool, count: int) -> dict[tuple[UUID, int], bytes]:
    """`count` generations of one image each, kept in PostgreSQL rows; their bytes."""
    made = {}
    job_ids = await insert_generations(pool, count)
    await set_status(pool, job_ids, "processing")
    for job_id in job_ids:
        png = b"\x89PNG" + os.urandom(2000)
        placed = Placement(stores.POSTGRES, None, png)
        digest = hashlib.sha256(png).hexdigest()
        assert await stores.record(
            pool,
            job_id=job_id,
            worker_id="w-test",
            attempt=1,
            index=0,
            placement=placed,
            size=len(png),
            sha256=digest,
        )
        made[(job_id, 0)] = png
    return made


async def test_move_to_s3_interrupted_and_run_again_moves_every_image_once(
    s3_settings, s3_server, bucket, pool, spawn
):
    """`images move-to-s3` stopped halfway by Ctrl-C (SIGINT) exits 130 with some images
    moved; run again it moves the rest and exits 0. Every image still serves the same bytes,
    each is in the bucket once, and no row keeps its bytes."""
    made = await add_row_images(pool, 30)
    env = s3_env(s3_settings)
    first = spawn(
        "-m",
        "app",
        "images",
        "move-to-s3",
        "--batch-size",
        "4",
        "--pause",
        "2",  # the window to interrupt it in: the first batch is in long before the last
        env=env,
        stderr=subprocess.PIPE,
    )

    async def some_moved() -> bool:
        return await pool.fetchval("SELECT count(*) FROM images WHERE store = 's3'") >= 4

    await wait_for(some_moved, timeout=30)
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=30)
    assert first.returncode == 130, stderr.decode()
    assert "run it again" in stderr.decode()
    moved = await pool.fetchval("SELECT count(*) FROM images WHERE store = 's3'")
    assert 4 <= moved < 30

    second = spawn("-m", "app", "images", "move-to-s3", env=env, stderr=subprocess.PIPE)
    _, stderr = second.communicate(timeout=60)
    assert second.returncode == 0, stderr.decode()
    assert "30/30 images" in stderr.decode() or f"{30 - moved}/{30 - moved} images" in stderr.decode()

    assert await pool.fetchval("SELECT count(*) FROM images WHERE store = 'postgres' OR png IS NOT NULL") == 0
    assert bucket_keys(s3_server, bucket) == sorted(f"images/{job_id}/0.0" for job_id, _ in made)
    async with api_client(s3_settings) as http:
        for (job_id, index), png in made.items():
            answer = await http.get(f"/images/{job_id}/{index}.png")
            assert answer.status_code == 200 and answer.content == png


@pytest.mark.parametrize("command", ["server", "worker"])
async def test_a_bucket_that_is_missing_or_unreachable_stops_the_process_with_one_line(
    command, s3_settings, spawn
):
    """IMAGE_STORE=s3 with a missing bucket, or an endpoint where nothing listens, stops the
    server and the worker at start: one line naming the setting, exit code 2."""
    env = s3_env(s3_settings)
    for wrong, named in (
        ({"S3_BUCKET": "no-such-bucket"}, "S3_BUCKET=no-such-bucket"),
        ({"S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}, "S3_ENDPOINT_URL=http://127.0.0.1:"),
    ):
        process = spawn("-m", "app", command, env={**env, **wrong}, stderr=subprocess.PIPE)
        _, stderr = process.communicate(timeout=60)
        lines = stderr.decode().strip().splitlines()
        assert process.returncode == 2, lines
        assert len(lines) == 1 and named in lines[0], lines


async def test_s3_create_bucket_creates_a_missing_bucket_at_start(s3_settings, s3_server, spawn):
    """With S3_CREATE_BUCKET=true a missing bucket is created at start, and the server runs."""
    name = f"menagerie-new-{secrets.token_hex(4)}"
    port = free_port()
    env = {**s3_env(s3_settings), "S3_BUCKET": name, "S3_CREATE_BUCKET": "true", "PORT": str(port)}
    process = spawn("-m", "app", "server", env=env)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

        async def ready() -> bool:
            assert process.poll() is None
            try:
                return (await http.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(ready, timeout=30, interval=0.1)
    assert name in [found["Name"] for found in s3_server.client().list_buckets()["Buckets"]]


def test_settings_refuse_an_s3_store_without_a_bucket_and_a_presign_ttl_over_seven_days():
    """IMAGE_STORE=s3 needs S3_BUCKET; S3_PRESIGN_TTL is at most 604,800 s (S3's limit); the
    prefix is a folder."""
    with pytest.raises(ValueError, match="IMAGE_STORE=s3 needs S3_BUCKET"):
        Settings(_env_file=None, image_store="s3")
    with pytest.raises(ValueError, match="s3_presign_ttl"):
        Settings(_env_file=None, s3_presign_ttl=int(timedelta(days=7).total_seconds()) + 1)
    with pytest.raises(ValueError, match="s3_prefix"):
        Settings(_env_file=None, s3_prefix="images")
    assert Settings(_env_file=None, s3_presign_ttl=604_800).s3_presign_ttl == 604_800


def test_s3_credentials_come_from_a_profile_when_no_key_is_set(tmp_path):
    """AWS_PROFILE reads the shared credentials file's section; a missing profile is an error
    naming AWS_PROFILE."""
    credentials = tmp_path / "credentials"
    credentials.write_text("[menagerie]\naws_access_key_id = AKIA1\naws_secret_access_key = s3cr3t\n")
    config = Settings(_env_file=None, aws_profile="menagerie", aws_shared_credentials_file=str(credentials))
    assert config.s3_credentials() == ("AKIA1", "s3cr3t", None)
    with pytest.raises(ValueError, match="AWS_PROFILE"):
        Settings(
            _env_file=None, aws_profile="other", aws_shared_credentials_file=str(credentials)
        ).s3_credentials()
