"""API keys (AUTH=keys): who sees which job, the 401 answer, the keys command, revocation,
Idempotency-Key per key, and the loopback rule of AUTH=none."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from uuid import UUID

import asyncpg
import httpx
import pytest

from app import keys
from app.api import auth
from app.settings import Settings
from tests.support import api_client, insert_generations, set_status, wait_for

MakeKey = Callable[..., Awaitable[str]]


@pytest.fixture
def keyed_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"auth": "keys"})


@pytest.fixture
async def keyed(keyed_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API with AUTH=keys, in process."""
    async with api_client(keyed_settings) as http:
        yield http


@pytest.fixture
def make_key(pool: asyncpg.Pool) -> MakeKey:
    """`await make_key("alice", admin=False, rate=1000, burst=1000, max_pending=None)`: a new
    key, as `keys create` makes it."""

    async def make(
        name: str,
        *,
        admin: bool = False,
        rate: float = 1000,
        burst: int = 1000,
        max_pending: int | None = None,
    ) -> str:
        token, _ = await keys.create(
            pool, name=name, admin=admin, rate=rate, burst=burst, max_pending=max_pending
        )
        return token

    return make


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def store_png(pool: asyncpg.Pool, job_id: str, idx: int = 0) -> None:
    png = b"\x89PNG\r\n\x1a\n" + idx.to_bytes(4, "big")
    await pool.execute(
        "INSERT INTO images (job_id, idx, png, sha256) VALUES ($1, $2, $3, $4)",
        UUID(job_id),
        idx,
        png,
        hashlib.sha256(png).hexdigest(),
    )


async def create(http: httpx.AsyncClient, token: str, **headers: str) -> dict:
    response = await http.post("/generations", json={"numImages": 2}, headers={**bearer(token), **headers})
    assert response.status_code == 202, response.text
    return response.json()


@pytest.fixture
async def world(keyed: httpx.AsyncClient, pool: asyncpg.Pool, make_key: MakeKey) -> dict[str, object]:
    """Keys owner, other, admin and revoked; the owner's completed job with two images, the
    owner's pending job, and a job made before keys (no owner)."""
    tokens = {name: await make_key(name) for name in ("owner", "other", "revoked")}
    tokens["admin"] = await make_key("admin", admin=True)
    await keys.revoke(pool, name="revoked")
    done = await create(keyed, tokens["owner"])
    await store_png(pool, done["jobId"], 0)
    await store_png(pool, done["jobId"], 1)
    await set_status(pool, [UUID(done["jobId"])], "completed")
    waiting = await create(keyed, tokens["owner"])
    [unowned] = await insert_generations(pool, 1)
    return {"tokens": tokens, "done": done["jobId"], "waiting": waiting["jobId"], "unowned": str(unowned)}


CALLERS = {
    "owner": "owner",
    "other": "other",
    "admin": "admin",
    "no key": None,
    "revoked key": "revoked",
    "garbage header": "garbage",
}
EXPECTED = {
    "owner": 200,
    "other": 404,
    "admin": 200,
    "no key": 401,
    "revoked key": 401,
    "garbage header": 401,
}


def caller_headers(world: dict, caller: str) -> dict[str, str]:
    name = CALLERS[caller]
    if name is None:
        return {}
    if name == "garbage":
        return {"Authorization": "Basic bm90OmEga2V5"}
    return bearer(world["tokens"][name])


ENDPOINTS = {
    "get": ("GET", "/generations/{done}"),
    "events": ("GET", "/generations/{done}/events"),
    "cancel": ("POST", "/generations/{waiting}/cancel"),
    "image": ("GET", "/images/{done}/1.png"),
}


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
async def test_isolation_matrix(keyed: httpx.AsyncClient, world: dict, endpoint: str, caller: str) -> None:
    """Each endpoint of a job answers its owner and admin keys, 404 to another key (never 403:
    its existence does not leak), and 401 problem+json with WWW-Authenticate to a missing,
    revoked or malformed key."""
    method, path = ENDPOINTS[endpoint]
    response = await keyed.request(method, path.format(**world), headers=caller_headers(world, caller))
    assert response.status_code == EXPECTED[caller], response.text
    if response.status_code == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.headers["content-type"] == "application/problem+json"
    if response.status_code == 404:
        assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("caller", ["no key", "revoked key", "garbage header"])
@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/generations"), ("POST", "/generations"), ("GET", "/animals")]
)
async def test_keyed_operations_refuse_a_bad_credential_the_same_way(
    keyed: httpx.AsyncClient, world: dict, caller: str, method: str, path: str
) -> None:
    """Listing, creating and the catalogue need a key: one and the same 401 body whatever was
    wrong with it (missing, revoked, malformed), and the key appears nowhere in it."""
    response = await keyed.request(method, path, headers=caller_headers(world, caller), json={"numImages": 1})
    body = response.json()
    assert response.status_code == 401
    assert {k: body[k] for k in ("type", "title", "status", "detail")} == {
        "type": "/problems/unauthorized",
        "title": "API key missing or not valid",
        "status": 401,
        "detail": "send a valid API key: Authorization: Bearer mng_…",
    }
    assert world["tokens"]["revoked"] not in response.text


async def test_public_endpoints_need_no_key(keyed: httpx.AsyncClient) -> None:
    """Health, readiness, metrics, the OpenAPI document and the docs page answer without a key."""
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/swagger-init.js"):
        assert (await keyed.get(path)).status_code == 200, path


async def test_jobs_of_other_keys_and_unowned_jobs_never_show_in_lists(
    keyed: httpx.AsyncClient, world: dict
) -> None:
    """A key lists only its own jobs, whatever the status filter; an admin key lists every job,
    those made before keys (no owner) included, which no other key sees."""
    tokens = world["tokens"]
    other_job = await create(keyed, tokens["other"])

    async def listed(token: str, query: str = "") -> set[str]:
        response = await keyed.get(f"/generations{query}", headers=bearer(token))
        assert response.status_code == 200
        return {job["jobId"] for job in response.json()}

    mine = {world["done"], world["waiting"]}
    assert await listed(tokens["owner"]) == mine
    assert await listed(tokens["other"]) == {other_job["jobId"]}
    assert await listed(tokens["admin"]) == mine | {other_job["jobId"], world["unowned"]}
    for status, expected in (
        ("completed", {world["done"]}),
        ("pending", {world["waiting"]}),
        ("failed", set()),
    ):
        assert await listed(tokens["owner"], f"?status={status}") == expected
    assert await listed(tokens["other"], "?status=completed") == set()
    assert world["unowned"] in await listed(tokens["admin"], "?status=pending")
    for name in ("owner", "other"):
        response = await keyed.get(f"/generations/{world['unowned']}", headers=bearer(tokens[name]))
        assert response.status_code == 404


async def test_another_keys_cancel_changes_nothing(keyed: httpx.AsyncClient, world: dict) -> None:
    """A cancel by another key is a 404 and the job still waits; the admin key cancels it."""
    tokens, waiting = world["tokens"], world["waiting"]
    assert (
        await keyed.post(f"/generations/{waiting}/cancel", headers=bearer(tokens["other"]))
    ).status_code == 404
    job = (await keyed.get(f"/generations/{waiting}", headers=bearer(tokens["owner"]))).json()
    assert job["status"] == "pending"
    canceled = await keyed.post(f"/generations/{waiting}/cancel", headers=bearer(tokens["admin"]))
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"


async def test_prefer_wait_does_not_show_another_keys_job(keyed: httpx.AsyncClient, world: dict) -> None:
    """`Prefer: wait` on another key's job is the same 404."""
    response = await keyed.get(
        f"/generations/{world['waiting']}", headers={**bearer(world["tokens"]["other"]), "Prefer": "wait=1"}
    )
    assert response.status_code == 404


async def test_idempotency_keys_are_scoped_per_api_key(keyed: httpx.AsyncClient, make_key: MakeKey) -> None:
    """Two API keys sending the same Idempotency-Key get two jobs; each key replays its own."""
    alice, bob = await make_key("alice"), await make_key("bob")
    first = await create(keyed, alice, **{"Idempotency-Key": "order-1"})
    second = await create(keyed, bob, **{"Idempotency-Key": "order-1"})
    again = await create(keyed, alice, **{"Idempotency-Key": "order-1"})
    assert first["jobId"] != second["jobId"]
    assert again["jobId"] == first["jobId"]


async def test_a_revoked_key_is_refused_within_5_seconds(
    keyed: httpx.AsyncClient, pool: asyncpg.Pool, make_key: MakeKey
) -> None:
    """A key revoked while a server has it cached stops working within 5 s."""
    token = await make_key("leaving")
    assert (await keyed.get("/animals", headers=bearer(token))).status_code == 200
    await keys.revoke(pool, name="leaving")

    async def refused() -> bool:
        return (await keyed.get("/animals", headers=bearer(token))).status_code == 401

    await wait_for(refused, timeout=5, interval=0.2)


async def test_keys_are_stored_only_as_keyed_hashes(pool: asyncpg.Pool, make_key: MakeKey) -> None:
    """The keys table holds the key's prefix and its HMAC, never the key itself."""
    token = await make_key("carol")
    row = await pool.fetchrow("SELECT prefix, hash FROM keys WHERE name = 'carol'")
    assert token.startswith("mng_") and len(token) >= 4 + 43
    assert row["prefix"] == token[:12]
    assert token.encode() not in bytes(row["hash"])
    secret = await keys.server_secret(pool, keys.KEY_HASH_SECRET)
    assert bytes(row["hash"]) == keys.key_hash(secret, token)


async def test_key_usage_counts_each_keys_jobs_by_status(
    keyed: httpx.AsyncClient, pool: asyncpg.Pool, world: dict
) -> None:
    """The key_usage view shows, per key, its jobs of the last 24 h by status."""
    rows = {row["name"]: row for row in await pool.fetch("SELECT * FROM key_usage")}
    assert (rows["owner"]["completed"], rows["owner"]["pending"], rows["owner"]["jobs"]) == (1, 1, 2)
    assert rows["other"]["jobs"] == 0 and rows["revoked"]["revoked"]


def run_keys(spawn, database_url: str, *args: str) -> tuple[int, str, str]:
    process = spawn(
        "-m",
        "app",
        "keys",
        *args,
        env={"DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = process.communicate(timeout=60)
    return process.returncode, out.decode(), err.decode()


async def test_keys_command_creates_lists_and_revokes(
    database_url: str, spawn, keyed_settings: Settings
) -> None:
    """`keys create` prints a working key once (alone on stdout); `keys list` shows its name,
    prefix and limits but not the key; `keys revoke` stops it; a second live key of the same
    name is refused."""
    code, token, _ = run_keys(
        spawn, database_url, "create", "dana", "--admin", "--rate", "5/s", "--burst", "7"
    )
    token = token.strip()
    assert code == 0 and token.startswith("mng_")
    assert run_keys(spawn, database_url, "create", "dana")[0] == 1
    code, listing, _ = run_keys(spawn, database_url, "list")
    assert code == 0 and "dana" in listing and token[:12] in listing and token not in listing
    assert " 5 " in listing and " 7 " in listing
    async with api_client(keyed_settings) as http:
        assert (await http.get("/generations", headers=bearer(token))).status_code == 200
        assert run_keys(spawn, database_url, "revoke", "dana")[0] == 0
        assert run_keys(spawn, database_url, "revoke", "dana")[0] == 1
        await asyncio.sleep(auth.KEY_CACHE_SECONDS)
        assert (await http.get("/generations", headers=bearer(token))).status_code == 401


def test_auth_none_is_refused_on_a_non_loopback_host(spawn) -> None:
    """AUTH=none with HOST=0.0.0.0 stops the server at start, with one line."""
    process = spawn("server.py", env={"AUTH": "none", "HOST": "0.0.0.0"}, stderr=subprocess.PIPE)
    _, stderr = process.communicate(timeout=30)
    lines = stderr.decode().strip().splitlines()
    assert process.returncode == 2
    assert len(lines) == 1 and "AUTH=none" in lines[0] and "HOST" in lines[0], lines


def test_auth_none_is_allowed_on_loopback_hosts() -> None:
    """AUTH=none is accepted for 127.0.0.1, ::1 and localhost; keys is the default."""
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert Settings(_env_file=None, auth="none", host=host).auth == "none"
    assert Settings(_env_file=None).auth == "keys"


async def test_migration_0007_rolls_back_and_applies_again(database_url: str, pool: asyncpg.Pool) -> None:
    """Rolling the keys migration back keeps every job (owners and keys go), and applying it
    again works."""
    from tests.test_upgrade import apply

    _, key = await keys.create(pool, name="erin", admin=False, rate=1, burst=1, max_pending=None)
    [job] = await insert_generations(pool, 1)
    await pool.execute("UPDATE generations SET owner_key = $1 WHERE job_id = $2", key.id, job)
    await pool.close()
    apply(database_url, rollback="0007.keys")
    apply(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM generations WHERE job_id = $1 AND owner_key IS NULL", job
            )
            == 1
        )
        assert await conn.fetchval("SELECT count(*) FROM keys") == 0
    finally:
        await conn.close()
