"""HTTP benchmarks of a real menagerie server (uvicorn, uvloop, httptools) under wrk.

* ``post``  - ``POST /generations`` at 64 connections: requests/s and latency percentiles.
* ``get``   - ``GET /generations/{id}`` of one job at 64 connections, and the same request to
  bench/bare_app.py (bare Starlette + asyncpg running the same statement: the ceiling),
  alternating, two rounds each; ``vs_bare`` is menagerie's rate over the ceiling's.
* ``auth``  - the cost of API keys: POST and GET spread over 100 keys (each GETs its own job,
  which has one image, so its URL is signed) with ``AUTH=keys``, against the same requests
  with ``AUTH=none``, alternating none, keys, none, keys… (three rounds each, one when
  quick); per side the median round, and ``keys_vs_none`` for req/s, p99 and server CPU per
  request.

The server runs as its own process on a fresh database (no worker, so every job stays
pending; MAX_PENDING_JOBS is raised so backpressure never answers). wrk runs on the same
machine (2 cores here: the load generator competes with the server and PostgreSQL).

The server under test runs with AUTH=none unless ``--server-env AUTH=keys`` says otherwise.

Usage::

    python bench/web.py --measure post [--quick] [--connections 64] [--server-env INSERT_BATCH_MAX=1]

Prints one JSON line. Needs wrk (Debian package ``wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from peers import DEFAULT_DSN_ADMIN, fresh_database

ROOT = Path(__file__).resolve().parent.parent
DURATION_S = (10, 1)  # full, quick (a smoke run: a second of wrk is thousands of requests)

POST_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"numImages": 1}'
wrk.headers["Content-Type"] = "application/json"
"""

LATENCY_LINE = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Served:
    base: str
    pid: int


@contextlib.asynccontextmanager
async def server(
    dsn: str, extra_env: dict[str, str] | None = None, *, script: Path = ROOT / "server.py"
) -> AsyncIterator[Served]:
    """A real server.py (or another ASGI server `script`) on a free port, `extra_env` added to
    its settings; its base URL and process id once it answers."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "MAX_PENDING_JOBS": "100000000",
        "AUTH": "none",
        **(extra_env or {}),
    }
    process = subprocess.Popen([sys.executable, str(script)], env=env, cwd=tempfile.gettempdir())
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=2) as http:
            for _ in range(300):
                if process.poll() is not None:
                    raise RuntimeError(f"{script.name} exited with {process.returncode} before it was ready")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/readyz")).status_code in (200, 404):  # 404: bare_app
                        break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"{script.name} was not ready within 30 s")
        yield Served(base, process.pid)
    finally:
        process.terminate()
        process.wait(15)


def wrk(url: str, *, connections: int, seconds: int, script: str | None = None) -> dict[str, Any]:
    """Run wrk; return requests/s, latency percentiles (ms), the requests answered, and the
    failed ones: answered neither 2xx nor 3xx (`non_2xx`), or lost to a socket error
    (connect, read, write, timeout: `socket_errors`); `failed` is their sum."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(script or "")
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", lua.name, url]
    output = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    os.unlink(lua.name)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    requests = int(re.search(r"(\d+) requests in ", output).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    # Printed only when there were any: "Socket errors: connect 0, read 2, write 0, timeout 0".
    socket = re.search(r"Socket errors:\s+connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = sum(int(n) for n in socket.groups()) if socket else 0
    non_2xx_count = int(non_2xx.group(1)) if non_2xx else 0
    latencies = {f"p{p}_ms": round(float(v) * UNITS[u], 2) for p, v, u in LATENCY_LINE.findall(output)}
    return {
        "requests_per_s": rate,
        **latencies,
        "requests": requests,
        "non_2xx": non_2xx_count,
        "socket_errors": socket_errors,
        "failed": non_2xx_count + socket_errors,
    }


async def measure(
    name: str, *, quick: bool, connections: int, dsn_admin: str, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    seconds = DURATION_S[1 if quick else 0]
    async with fresh_database(dsn_admin, "http") as dsn:
        from app import migrate

        await asyncio.to_thread(migrate.apply, dsn)
        async with server(dsn, extra_env) as served:
            base = served.base
            if name == "post":
                figures = await asyncio.to_thread(
                    wrk, f"{base}/generations", connections=connections, seconds=seconds, script=POST_SCRIPT
                )
                conn = await asyncpg.connect(dsn)
                try:
                    figures["jobs_written"] = await conn.fetchval("SELECT count(*) FROM jobs")
                finally:
                    await conn.close()
            elif name == "get":
                async with httpx.AsyncClient(base_url=base) as http:
                    location = (await http.post("/generations", json={"numImages": 1})).headers["location"]
            else:
                raise ValueError(name)
        if name == "get":
            figures = await get_against_bare(
                dsn, location, quick=quick, connections=connections, extra_env=extra_env
            )
    return {
        "measure": f"http-{name}",
        "quick": quick,
        "connections": connections,
        "server_env": extra_env or {},
        "figures": figures,
    }


KEYS = 100
AUTH_ROUNDS = 3
KEY_SCRIPT = """
local keys = {%s}
local paths = {%s}
local method, body = "%s", %s
local turn = 0
request = function()
  turn = turn %% #keys + 1
  local headers = {["Authorization"] = "Bearer " .. keys[turn], ["Content-Type"] = "application/json"}
  return wrk.format(method, paths[turn], headers, body)
end
"""
"""wrk's requests for the auth measure: key after key, each to its own job (GET) or to
/generations (POST). The same script drives AUTH=none, which ignores the header."""


def key_script(tokens: list[str], paths: list[str], *, post: bool) -> str:
    quoted = ", ".join(f'"{token}"' for token in tokens)
    where = ", ".join(f'"{path}"' for path in paths)
    return KEY_SCRIPT % (quoted, where, "POST" if post else "GET", "'{\"numImages\": 1}'" if post else "nil")


async def measure_auth(*, quick: bool, connections: int, dsn_admin: str) -> dict[str, Any]:
    """POST and GET with AUTH=keys (100 keys) against AUTH=none, alternating."""
    from app import keys

    seconds = DURATION_S[1 if quick else 0]
    async with fresh_database(dsn_admin, "auth") as dsn:
        from app import migrate

        await asyncio.to_thread(migrate.apply, dsn)
        conn = await asyncpg.connect(dsn)
        try:
            tokens = [
                (
                    await keys.create(
                        conn, name=f"bench{n}", admin=False, rate=1000, burst=1000, max_pending=None
                    )
                )[0]
                for n in range(KEYS)
            ]
        finally:
            await conn.close()
        async with server(dsn, {"AUTH": "keys"}) as served, httpx.AsyncClient(base_url=served.base) as http:
            jobs = [
                (
                    await http.post(
                        "/generations", json={"numImages": 1}, headers={"Authorization": f"Bearer {token}"}
                    )
                ).json()["jobId"]
                for token in tokens
            ]
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "INSERT INTO images (job_id, idx, png, sha256) SELECT unnest($1::uuid[]), 0, '\\x00', 'x'",
                jobs,
            )
        finally:
            await conn.close()
        scripts = {
            "post": key_script(tokens, ["/generations"] * KEYS, post=True),
            "get": key_script(tokens, [f"/generations/{job}" for job in jobs], post=False),
        }
        rounds: dict[str, dict[str, list[dict[str, Any]]]] = {
            name: {"none": [], "keys": []} for name in scripts
        }
        for _ in range(1 if quick else AUTH_ROUNDS):
            for mode in ("none", "keys"):
                async with server(dsn, {"AUTH": mode}) as served:
                    for name, script in scripts.items():
                        before = cpu_seconds(served.pid)
                        figures = await asyncio.to_thread(
                            wrk,
                            f"{served.base}/generations",
                            connections=connections,
                            seconds=seconds,
                            script=script,
                        )
                        used = cpu_seconds(served.pid) - before
                        figures["server_cpu_us_per_request"] = round(used / figures["requests"] * 1e6, 1)
                        rounds[name][mode].append(figures)

    def middle(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return sorted(runs, key=lambda run: run["requests_per_s"])[(len(runs) - 1) // 2]

    shown = ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request", "failed")
    result: dict[str, Any] = {}
    for name, sides in rounds.items():
        none, keyed = middle(sides["none"]), middle(sides["keys"])
        result[name] = {
            "none": {key: none[key] for key in shown},
            "keys": {key: keyed[key] for key in shown},
            "keys_vs_none_rate": round(keyed["requests_per_s"] / none["requests_per_s"], 3),
            "keys_vs_none_p99": round(keyed["p99_ms"] / none["p99_ms"], 3),
            # CPU per request of the server process: steadier than req/s on a busy machine.
            "keys_vs_none_cpu": round(
                keyed["server_cpu_us_per_request"] / none["server_cpu_us_per_request"], 3
            ),
            "rounds": {mode: [run["requests_per_s"] for run in runs] for mode, runs in sides.items()},
        }
    return {
        "measure": "http-auth",
        "quick": quick,
        "connections": connections,
        "keys": KEYS,
        "figures": result,
    }


BARE_APP = ROOT / "bench" / "bare_app.py"


async def get_against_bare(
    dsn: str, location: str, *, quick: bool, connections: int, extra_env: dict[str, str] | None
) -> dict[str, Any]:
    """GET `location` from menagerie and from the bare app, alternating (bare first), one round
    each when quick, two otherwise; menagerie's figures are the median round's, with the
    bare app's as `bare` and the ratio of rates as `vs_bare`."""
    seconds = DURATION_S[1 if quick else 0]
    rounds: dict[str, list[dict[str, Any]]] = {"bare": [], "menagerie": []}
    for _ in range(1 if quick else 2):
        for which, script in (("bare", BARE_APP), ("menagerie", ROOT / "server.py")):
            async with server(dsn, extra_env if which == "menagerie" else None, script=script) as served:
                before = cpu_seconds(served.pid)
                figures = await asyncio.to_thread(
                    wrk, f"{served.base}{location}", connections=connections, seconds=seconds
                )
                used = cpu_seconds(served.pid) - before
            # CPU per request of the server process: steadier than req/s on a busy machine.
            figures["server_cpu_us_per_request"] = round(used / figures["requests"] * 1e6, 1)
            rounds[which].append(figures)

    def middle(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return sorted(runs, key=lambda run: run["requests_per_s"])[(len(runs) - 1) // 2]

    ours, bare = middle(rounds["menagerie"]), middle(rounds["bare"])
    return {
        **ours,
        "bare": bare,
        "vs_bare": round(ours["requests_per_s"] / bare["requests_per_s"], 2),
        "cpu_vs_bare": round(ours["server_cpu_us_per_request"] / bare["server_cpu_us_per_request"], 2),
        "rounds": {which: [run["requests_per_s"] for run in runs] for which, runs in rounds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", choices=("post", "get", "auth"), required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--dsn-admin", default=os.environ.get("BENCH_DSN_ADMIN", DEFAULT_DSN_ADMIN))
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for the server under test, e.g. INSERT_BATCH_MAX=1 (repeatable)",
    )
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.server_env)
    if shutil.which("wrk") is None:
        sys.exit("bench/web.py needs wrk: apt-get install wrk")
    sys.path.insert(0, str(ROOT))
    if args.measure == "auth":
        result = asyncio.run(
            measure_auth(quick=args.quick, connections=args.connections, dsn_admin=args.dsn_admin)
        )
        print(json.dumps(result), flush=True)
        return
    result = asyncio.run(
        measure(
            args.measure,
            quick=args.quick,
            connections=args.connections,
            dsn_admin=args.dsn_admin,
            extra_env=extra_env,
        )
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
