"""API keys (AUTH=keys): who sees which job, the 401 answer, the keys command, revocation,
Idempotency-Key per key, and the loopback rule of AUTH=none."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from uuid import UUID

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from app import keys
from app.api import auth
from app.settings import Settings
from tests.support import api_client, free_port, insert_generations, set_status, wait_for, wait_ready

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
    assert bytes(row["hash"]) == hmac.digest(secret, token.encode(), "sha256")


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


# Signed image URLs


async def signed_urls(keyed: httpx.AsyncClient, world: dict) -> list[str]:
    job = (await keyed.get(f"/generations/{world['done']}", headers=bearer(world["tokens"]["owner"]))).json()
    return [url.removeprefix("http://menagerie.test") for url in job["imageUrls"]]


async def test_a_signed_image_url_works_without_a_key_and_privately(
    keyed: httpx.AsyncClient, world: dict
) -> None:
    """The imageUrls of a job are signed: each fetches its PNG with no key at all, marked
    Cache-Control private; the same image without signature or key is a 401."""
    urls = await signed_urls(keyed, world)
    assert len(urls) == 2 and all("?expires=" in url and "&sig=" in url for url in urls)
    response = await keyed.get(urls[1])
    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
    assert response.headers["cache-control"].startswith("private")
    assert (await keyed.get(urls[1].split("?")[0])).status_code == 401


async def test_a_jobs_json_and_etag_do_not_change_between_reads(
    keyed: httpx.AsyncClient, world: dict
) -> None:
    """The signature's expiry is rounded up to half the TTL, so two reads of a job give the
    same bytes and ETag (a conditional GET is a 304)."""
    headers = bearer(world["tokens"]["owner"])
    first = await keyed.get(f"/generations/{world['done']}", headers=headers)
    second = await keyed.get(
        f"/generations/{world['done']}", headers={**headers, "If-None-Match": first.headers["etag"]}
    )
    assert second.status_code == 304 and second.headers["etag"] == first.headers["etag"]


def expiry_of(url: str) -> int:
    return int(url.split("expires=")[1].split("&")[0])


async def test_the_expiry_is_a_multiple_of_half_the_ttl_at_least_a_ttl_away(
    keyed: httpx.AsyncClient, world: dict, keyed_settings: Settings
) -> None:
    """A signed URL expires at a multiple of IMAGE_URL_TTL / 2, between one TTL and one and a
    half TTLs from now."""
    import time

    ttl = keyed_settings.image_url_ttl
    before = time.time()
    expires = expiry_of((await signed_urls(keyed, world))[0])
    after = time.time()
    assert expires % (ttl / 2) == 0
    assert before + ttl <= expires <= after + 1.5 * ttl


async def test_an_expired_or_altered_signature_is_not_found(
    keyed: httpx.AsyncClient, pool: asyncpg.Pool, world: dict, make_key: MakeKey
) -> None:
    """An expired URL (correctly signed for a past time), an altered path, an altered
    signature, and another job's signature are each a 404 problem."""
    import time

    urls = await signed_urls(keyed, world)
    path0, query0 = urls[0].split("?")
    path1 = urls[1].split("?")[0]
    secret = await keys.server_secret(pool, keys.IMAGE_URL_SECRET)
    past = int(time.time()) - 10
    expired = path0 + auth.Signing(keys.KeyedHash(secret), past)(path0)
    signature = query0.split("sig=")[1]
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    other_job = await create(keyed, world["tokens"]["other"])
    await store_png(pool, other_job["jobId"], 0)
    for url in (
        expired,
        f"{path1}?{query0}",  # the signature of image 0 on image 1
        f"{path0}?{query0.replace(signature, flipped)}",
        f"/images/{other_job['jobId']}/0.png?{query0}",  # another job's signature
        f"{path0}?expires={expiry_of(urls[0]) + 1}&sig={signature}",  # a later expiry
    ):
        response = await keyed.get(url)
        assert response.status_code == 404, url
        assert response.headers["content-type"] == "application/problem+json"


async def test_image_urls_are_not_signed_without_keys(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    """With AUTH=none image URLs are plain and images are publicly cacheable, as before."""
    job = (await client.post("/generations", json={"numImages": 1})).json()
    await store_png(pool, job["jobId"], 0)
    read = (await client.get(f"/generations/{job['jobId']}")).json()
    assert read["imageUrls"] == [f"http://menagerie.test/images/{job['jobId']}/0.png"]
    image = await client.get(f"/images/{job['jobId']}/0.png")
    assert image.headers["cache-control"].startswith("public")


# Headers


async def test_every_answer_carries_the_security_headers(keyed: httpx.AsyncClient, world: dict) -> None:
    """nosniff and no-referrer on every answer (200, 401, 404, public or keyed); keyed JSON
    answers are Cache-Control private."""
    owner = bearer(world["tokens"]["owner"])
    for path, headers in (
        ("/healthz", {}),
        ("/generations", {}),
        ("/generations", owner),
        ("/no/such/path", owner),
        (f"/generations/{world['done']}", owner),
    ):
        response = await keyed.get(path, headers=headers)
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["referrer-policy"] == "no-referrer", path
        if headers:
            assert response.headers["cache-control"] == "private", path


async def test_cors_preflight_answers_only_the_configured_origins(
    keyed_settings: Settings, world: dict
) -> None:
    """With CORS_ORIGINS set, a preflight from that origin may send Authorization, and answers
    carry Access-Control-Allow-Origin; another origin's preflight is refused; without
    CORS_ORIGINS no origin is allowed."""
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    allowed = keyed_settings.model_copy(update={"cors_origins": ["https://app.example"]})
    async with api_client(allowed) as http:
        ok = await http.options("/generations", headers={**preflight, "Origin": "https://app.example"})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        refused = await http.options("/generations", headers={**preflight, "Origin": "https://evil.example"})
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
        read = await http.get(
            "/generations", headers={**bearer(world["tokens"]["owner"]), "Origin": "https://app.example"}
        )
        assert read.headers["access-control-allow-origin"] == "https://app.example"
    async with api_client(keyed_settings) as http:
        none = await http.options("/generations", headers={**preflight, "Origin": "https://app.example"})
        assert "access-control-allow-origin" not in none.headers


def test_cors_origins_is_a_comma_list() -> None:
    """CORS_ORIGINS reads as a comma list; unset, no origin."""
    assert Settings(_env_file=None, cors_origins="https://a.example, https://b.example").cors_origins == [
        "https://a.example",
        "https://b.example",
    ]
    assert Settings(_env_file=None).cors_origins == []


# Limits


async def test_a_key_over_its_burst_gets_429_with_ratelimit_headers(
    keyed: httpx.AsyncClient, make_key: MakeKey
) -> None:
    """A key with rate 1/s and burst 3 gets 3 answers at once, then a 429 problem with
    Retry-After and the RateLimit headers; every keyed answer carries RateLimit-Policy and
    RateLimit; another key is not affected."""
    slow, other = await make_key("slow", rate=1, burst=3), await make_key("busy", rate=1, burst=3)
    answers = [await keyed.get("/animals", headers=bearer(slow)) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    for answer in answers:
        assert answer.headers["ratelimit-policy"] == '"key";q=1;w=1'
        assert answer.headers["ratelimit"].startswith('"key";r=')
    refused = answers[-1]
    assert refused.json()["type"] == "/problems/rate-limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit"].startswith('"key";r=0;')
    assert (await keyed.get("/animals", headers=bearer(other))).status_code == 200


async def test_a_key_at_its_max_pending_gets_its_own_429(keyed: httpx.AsyncClient, make_key: MakeKey) -> None:
    """A key made with --max-pending 2 creates two pending jobs, then gets a 429 of type
    too-many-pending (not the global 503); once one is canceled it may create again; another
    key is not limited by it."""
    token = await make_key("patient", max_pending=2)
    first = await create(keyed, token)
    await create(keyed, token)
    refused = await keyed.post("/generations", json={"numImages": 1}, headers=bearer(token))
    assert refused.status_code == 429
    assert refused.json()["type"] == "/problems/too-many-pending"
    assert refused.headers["retry-after"]
    await create(keyed, await make_key("someone"))
    await keyed.post(f"/generations/{first['jobId']}/cancel", headers=bearer(token))
    await create(keyed, token)


async def test_a_keys_rate_holds_across_two_server_processes(
    database_url: str, pool: asyncpg.Pool, spawn, make_key: MakeKey
) -> None:
    """One key at three times its rate for 5 s, spread over two server processes on one
    database: no more than rate × 5 + burst requests (plus one second of rate as slack) are
    accepted in total, the rest are 429 with Retry-After and RateLimit headers; another key
    at a quarter of its rate meanwhile gets every request through."""
    rate, burst, seconds = 10, 5, 5
    hasty = await make_key("hasty", rate=rate, burst=burst)
    calm = await make_key("calm", rate=rate, burst=burst)
    bases = []
    for _ in range(2):
        port = free_port()
        env = {"DATABASE_URL": database_url, "AUTO_MIGRATE": "false", "PORT": str(port), "AUTH": "keys"}
        server = spawn("server.py", env=env)
        bases.append((f"http://127.0.0.1:{port}", server))
    for base, server in bases:
        await wait_ready(base, server)
    async with httpx.AsyncClient(timeout=10) as http:
        sent: list[asyncio.Task[httpx.Response]] = []
        calm_sent: list[asyncio.Task[httpx.Response]] = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index in range(3 * rate * seconds):
            base = bases[index % 2][0]
            sent.append(asyncio.create_task(http.get(f"{base}/animals", headers=bearer(hasty))))
            if index % 12 == 0:
                calm_sent.append(asyncio.create_task(http.get(f"{base}/animals", headers=bearer(calm))))
            await asyncio.sleep(max(0.0, start + (index + 1) / (3 * rate) - loop.time()))
        answers = await asyncio.gather(*sent)
        calm_answers = await asyncio.gather(*calm_sent)
    accepted = [answer for answer in answers if answer.status_code == 200]
    refused = [answer for answer in answers if answer.status_code != 200]
    assert len(accepted) <= rate * seconds + burst + rate, len(accepted)
    assert refused and {answer.status_code for answer in refused} == {429}
    for answer in refused:
        assert int(answer.headers["retry-after"]) >= 1
        assert answer.headers["ratelimit-policy"] == f'"key";q={rate};w=1'
        assert answer.headers["ratelimit"].startswith('"key";r=')
    assert {answer.status_code for answer in calm_answers} == {200}


async def test_a_key_whose_bucket_was_lost_gets_a_full_one(
    keyed: httpx.AsyncClient, pool: asyncpg.Pool, make_key: MakeKey
) -> None:
    """key_buckets is unlogged, so a crash empties it: a key with no bucket row is served from
    a full bucket again, not refused forever."""
    token = await make_key("phoenix", rate=1, burst=2)
    await pool.execute("DELETE FROM key_buckets")
    answers = [(await keyed.get("/animals", headers=bearer(token))).status_code for _ in range(3)]
    assert answers == [200, 200, 429]
    assert await pool.fetchval("SELECT count(*) FROM key_buckets") == 1


async def test_a_lookup_notes_the_key_as_used(
    keyed: httpx.AsyncClient, pool: asyncpg.Pool, make_key: MakeKey
) -> None:
    """keys.last_used_at is set by the first request with the key."""
    token = await make_key("fresh")
    assert await pool.fetchval("SELECT last_used_at FROM keys WHERE name = 'fresh'") is None
    await keyed.get("/animals", headers=bearer(token))
    assert await pool.fetchval("SELECT last_used_at FROM keys WHERE name = 'fresh'") is not None


@pytest.mark.parametrize("status", [None, "pending", "processing", "completed", "failed", "canceled"])
async def test_a_keys_listing_reads_few_rows_among_100k_jobs_of_another_key(
    pool: asyncpg.Pool, make_key: MakeKey, status: str | None
) -> None:
    """GET /generations for a key with a few jobs, among 100,000 completed jobs of another key,
    reads a few hundred rows at most, in custom and generic plans (counted from EXPLAIN
    ANALYZE as tests/test_queue.py does)."""
    from app.images import generations
    from app.queue.kinds import Status
    from tests.test_queue import PLAN_MODES, QUEUE_TABLES, _plan, _plan_nodes, finished_generations

    await make_key("big")
    await make_key("small")
    big, small = [
        await pool.fetchval("SELECT id FROM keys WHERE name = $1", name) for name in ("big", "small")
    ]
    await finished_generations(pool, 100_000)
    await pool.execute("UPDATE generations SET owner_key = $1", big)
    for finished in ("completed", "failed", "canceled"):
        await finished_generations(pool, 5, finished)
    await insert_generations(pool, 5)
    await set_status(pool, await insert_generations(pool, 5), "processing")
    await pool.execute("UPDATE generations SET owner_key = $1 WHERE owner_key IS NULL", small)
    await pool.execute("VACUUM ANALYZE")
    wanted = None if status is None else Status(status)
    query, args = generations.list_statement(wanted, None, 51, small)
    async with pool.acquire() as conn:
        for mode in PLAN_MODES:
            plan = await _plan(conn, query, args, mode=mode, analyze=True)
            read = sum(
                node["Actual Rows"] * node["Actual Loops"]
                + node.get("Rows Removed by Filter", 0)
                + node.get("Rows Removed by Index Recheck", 0)
                for node in _plan_nodes(plan)
                if node.get("Relation Name") in QUEUE_TABLES
            )
            assert read <= 500, (mode, read)
    page = await generations.list_page(pool, status=wanted, after=None, limit=51, viewer=small)
    assert len(page) == (25 if status is None else 5)


async def test_keys_appear_in_logs_and_metrics_only_as_their_prefix(
    keyed: httpx.AsyncClient, pool: asyncpg.Pool, make_key: MakeKey, caplog: pytest.LogCaptureFixture
) -> None:
    """Creating a job logs the key's prefix, a refused key is logged by its prefix (or not at
    all when it does not look like a key); no key reaches a log line, a problem body or the
    metrics."""
    import logging

    caplog.set_level(logging.INFO)
    token = await make_key("logged")
    unknown = keys.new_key()
    await create(keyed, token)
    refused = await keyed.get("/generations", headers=bearer(unknown))
    await keyed.get("/generations", headers={"Authorization": "Bearer not-a-key-at-all"})
    metrics = (await keyed.get("/metrics")).text
    records = [
        record for record in caplog.records if getattr(record, "action", "") in ("job_created", "key_refused")
    ]
    assert [getattr(record, "key", None) for record in records] == [token[:12], unknown[:12], "(not a key)"]
    for text in (caplog.text, refused.text, metrics):
        assert token not in text and unknown not in text and "not-a-key-at-all" not in text


async def test_image_urls_are_signed_with_image_url_secret_when_it_is_set(
    keyed_settings: Settings, pool: asyncpg.Pool, make_key: MakeKey
) -> None:
    """With IMAGE_URL_SECRET set, every server signs with it (no secret is made in the
    database), so servers configured alike accept each other's URLs."""
    configured = keyed_settings.model_copy(update={"image_url_secret": SecretStr("shared-by-every-server")})
    token = await make_key("signer")
    async with api_client(configured) as http:
        job = await create(http, token)
        await store_png(pool, job["jobId"], 0)
        [url] = (await http.get(f"/generations/{job['jobId']}", headers=bearer(token))).json()["imageUrls"]
    path = f"/images/{job['jobId']}/0.png"
    assert url.endswith(path + auth.Signing(keys.KeyedHash(b"shared-by-every-server"), expiry_of(url))(path))
    assert await pool.fetchval("SELECT count(*) FROM server_secrets WHERE name = 'image_url'") == 0
    async with api_client(configured) as other_server:
        assert (await other_server.get(url.removeprefix("http://menagerie.test"))).status_code == 200


@pytest.mark.parametrize("secret", [b"", b"k" * 32, b"k" * 64, b"k" * 65, bytes(range(200))])
def test_keyed_hash_is_hmac_sha256(secret: bytes) -> None:
    """KeyedHash, the precomputed HMAC the server uses, gives exactly HMAC-SHA256 (RFC 2104)
    for secrets shorter than, as long as, and longer than a block."""
    for message in (b"", b"mng_" + b"a" * 43, b"x" * 1000):
        assert keys.KeyedHash(secret)(message) == hmac.digest(secret, message, "sha256")
