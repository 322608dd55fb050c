"""The real processes: server.py, worker.py and `python -m app`, over real HTTP."""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
from pathlib import Path

import asyncpg
import httpx
import pytest
from PIL import Image

from tests.support import free_port, wait_ready, wait_until_terminal


def assert_distinct_pngs(blobs: list[bytes], size: int) -> None:
    for blob in blobs:
        image = Image.open(io.BytesIO(blob))
        image.verify()
        assert (image.format, image.size) == ("PNG", (size, size))
    assert len(set(blobs)) == len(blobs)


@pytest.mark.smoke
async def test_server_and_worker_on_a_fresh_database_complete_a_job_over_http(empty_database_url, spawn):
    """Started together on an empty database (both migrate, under yoyo's lock), the server
    takes a job over HTTP, the worker completes it, and its URLs serve distinct valid PNGs."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "DATABASE_URL": empty_database_url,
        "PORT": str(port),
        "IMAGE_PROVIDER_DELAY": "0",
        "IMAGE_SIZE": "128",
        "WORKER_POLL_INTERVAL": "3600",
    }
    server = spawn("server.py", env=env)
    spawn("worker.py", env=env)
    await wait_ready(base, server)
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        created = await http.post("/generations", json={"numImages": 3})
        assert created.status_code == 202
        job = await wait_until_terminal(http, created.headers["location"])
        assert job["status"] == "completed"
        assert len(job["imageUrls"]) == 3
        assert all(url.startswith(f"{base}/images/") for url in job["imageUrls"])
        downloads = [await http.get(url) for url in job["imageUrls"]]
    assert {response.headers["content-type"] for response in downloads} == {"image/png"}
    assert_distinct_pngs([response.content for response in downloads], 128)


@pytest.mark.parametrize("script", ["server.py", "worker.py"])
@pytest.mark.parametrize(
    ("variable", "value"),
    [("MAX_IMAGES_PER_JOB", "lots"), ("WORKER_CONCURRENCY", "0"), ("DATABASE_URL", "mysql://x/y")],
)
def test_a_bad_setting_stops_the_process_with_one_line_naming_it(spawn, script, variable, value):
    """A bad value stops either process at start, exit code 2, with one line naming the variable."""
    process = spawn(script, env={variable: value}, stderr=subprocess.PIPE)
    _, stderr = process.communicate(timeout=30)
    lines = stderr.decode().strip().splitlines()
    assert process.returncode == 2
    assert len(lines) == 1 and variable in lines[0], lines


async def test_migrate_command_applies_then_reports_up_to_date(empty_database_url, spawn):
    """`python -m app migrate` creates the schema on an empty database, and a second run
    changes nothing."""
    env = {"DATABASE_URL": empty_database_url}
    outputs = []
    for _ in range(2):
        process = spawn("-m", "app", "migrate", env=env, stdout=subprocess.PIPE)
        stdout, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        outputs.append(stdout.decode())
    assert "applied" in outputs[0] and "up to date" in outputs[1]
    conn = await asyncpg.connect(empty_database_url)
    try:
        tables = {row["tablename"] for row in await conn.fetch("SELECT tablename FROM pg_tables")}
    finally:
        await conn.close()
    assert {"job_queue", "finished_jobs", "generations", "images"} <= tables


async def test_the_run_command_serves_on_an_embedded_postgres_and_stops_it_on_ctrl_c(spawn, tmp_path):
    """With DATABASE_URL unset, `python -m app run` starts an embedded PostgreSQL under
    DATA_DIR, serves jobs end to end, and on Ctrl-C exits 0 with that PostgreSQL stopped."""
    port = free_port()
    data_dir = tmp_path / "data"
    env = {"DATA_DIR": str(data_dir), "PORT": str(port), "IMAGE_PROVIDER_DELAY": "0", "IMAGE_SIZE": "64"}
    runner = spawn("-m", "app", "run", env=env)
    base = f"http://127.0.0.1:{port}"
    await wait_ready(base, runner)
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        created = await http.post("/generations", json={"numImages": 2, "animal": "owl"})
        job = await wait_until_terminal(http, created.headers["location"])
    assert job["status"] == "completed" and len(job["imageUrls"]) == 2
    postmaster = Path(data_dir / "postgres" / "postmaster.pid")
    assert postmaster.exists()
    runner.send_signal(signal.SIGINT)
    assert runner.wait(30) == 0
    assert not postmaster.exists(), "the embedded PostgreSQL is still running"


def read_until(process: subprocess.Popen[bytes], prefix: str) -> list[str]:
    """Lines of the process's stderr up to the first that starts with `prefix` (or its end)."""
    lines: list[str] = []
    assert process.stderr is not None
    for raw in process.stderr:
        lines.append(raw.decode().rstrip("\n"))
        if lines[-1].startswith(prefix):
            break
    return lines


async def test_the_run_command_makes_the_dev_admin_key_once_and_prints_it_at_each_start(
    database_url, spawn, tmp_path
):
    """With AUTH=keys, `python -m app run` makes an admin key `dev` at its first start, keeps it
    in DATA_DIR (mode 0600) and prints a ready `export MENAGERIE_KEY=…` line; the key works
    (and sees every job); the next start prints the same key without making another."""
    data_dir = tmp_path / "data"
    printed = []
    for _ in range(2):
        port = free_port()
        env = {
            "DATABASE_URL": database_url,
            "DATA_DIR": str(data_dir),
            "PORT": str(port),
            "AUTH": "keys",
        }
        runner = spawn("-m", "app", "run", env=env, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base, runner)
        kept = data_dir / "dev-key"
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            answer = await http.get(
                "/generations", headers={"Authorization": f"Bearer {kept.read_text().strip()}"}
            )
            assert answer.status_code == 200
            assert (await http.get("/generations")).status_code == 401
        lines = await asyncio.to_thread(read_until, runner, "export MENAGERIE_KEY=")
        runner.send_signal(signal.SIGINT)
        runner.communicate(timeout=30)
        exports = [line for line in lines if line.startswith("export MENAGERIE_KEY=")]
        assert len(exports) == 1, lines[-20:]
        printed.append(exports[0].removeprefix("export MENAGERIE_KEY="))
    assert printed[0] == printed[1] and printed[0].startswith("mng_")
    assert kept.read_text().strip() == printed[0]
    assert kept.stat().st_mode & 0o777 == 0o600
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT name, admin FROM keys")
    finally:
        await conn.close()
    assert [(row["name"], row["admin"]) for row in rows] == [("dev", True)]


def test_the_server_takes_its_start_up_heap_out_of_the_collectors_sight():
    """Before it serves, `menagerie server` freezes what it has built (cli.settle_heap): full
    collections then walk only what requests create, not the modules and the app (which made
    every full collection stop all requests for tens of milliseconds)."""
    import gc

    from app import cli

    assert gc.get_freeze_count() == 0
    try:
        cli.settle_heap()
        assert gc.get_freeze_count() > 10_000  # the modules and objects of this process
        assert all(count < 10_000 for count in gc.get_count())
    finally:
        gc.unfreeze()
