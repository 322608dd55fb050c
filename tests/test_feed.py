"""GET /generations/events (one stream of every job's changes) and GET /queue, over real HTTP
from a real server, with a real worker making images and transactions held open by hand."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from jsonschema import Draft202012Validator

from app import keys, queue
from app.images import generations
from tests.support import free_port, insert_generations, insert_jobs, set_status, wait_for, wait_ready
from tests.test_events import Event, read_events

ROOT = Path(__file__).resolve().parent.parent


def service_env(database_url: str, port: int) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "AUTO_MIGRATE": "false",
        "PORT": str(port),
        "IMAGE_PROVIDER_DELAY": "0.2",
        "IMAGE_SIZE": "64",
        "SSE_HEARTBEAT": "0.5",
        "DB_POOL_SIZE": "4",
    }


@pytest.fixture
async def service(database_url, spawn) -> AsyncIterator[str]:
    """A server and a worker (images take 0.2 s each) on a fresh database; the base URL."""
    port = free_port()
    env = service_env(database_url, port)
    server = spawn("server.py", env=env)
    spawn("worker.py", env=env)
    base = f"http://127.0.0.1:{port}"
    await wait_ready(base, server)
    yield base


class Follow:
    """GET /generations/events read in the background: every event, as it arrives."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.ids: list[str] = []
        self.status: int | None = None

    async def run(self, http: httpx.AsyncClient, headers: dict[str, str]) -> None:
        async with http.stream("GET", "/generations/events", headers=headers) as response:
            self.status = response.status_code
            async for event in read_events(response):
                self.events.append(event)

    def jobs(self) -> list[Event]:
        return [event for event in self.events if event.name != "ready"]

    async def until(self, predicate: Callable[[list[Event]], bool], timeout: float = 20) -> None:
        async def met() -> bool:
            return predicate(self.jobs())

        await wait_for(met, timeout=timeout)


@contextlib.asynccontextmanager
async def following(
    base: str, last_event_id: str | None = None, *, headers: dict[str, str] | None = None, token: str = ""
) -> AsyncIterator[Follow]:
    """Follow every job's events until the block ends; yields once `ready` has arrived."""
    follow = Follow()
    headers = {**(headers or {}), **({} if last_event_id is None else {"Last-Event-ID": last_event_id})}
    params = {"token": token} if token else {}
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(5, read=None), params=params) as http:
        task = asyncio.create_task(follow.run(http, headers))

        async def ready() -> bool:
            assert not task.done() or task.exception() is None, task.exception()
            return bool(follow.events)

        await wait_for(ready)
        try:
            yield follow
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def finished(job_id: str, images: int) -> Callable[[list[Event]], bool]:
    def check(events: list[Event]) -> bool:
        return any(
            event.job["jobId"] == job_id
            and event.job["status"] == "completed"
            and len(event.job["imageUrls"]) == images
            for event in events
        )

    return check


@pytest.mark.smoke
async def test_one_stream_shows_every_job_change_with_ordered_ids_and_the_whole_job(service):
    """A client of GET /generations/events sees `ready`, then for two jobs created after it
    connected their changes up to completion (each image count in order), with increasing
    numeric ids, each event's data the whole job as JobOut describes it."""
    async with httpx.AsyncClient(base_url=service, timeout=10) as http:
        schema = (await http.get("/openapi.json")).json()
        async with following(service) as follow:
            assert follow.events[0].name == "ready" and follow.events[0].job == {"resumed": False}
            created = [
                (await http.post("/generations", json={"numImages": n})).json()["jobId"] for n in (2, 3)
            ]
            await follow.until(
                lambda events: all(finished(j, n)(events) for j, n in zip(created, (2, 3), strict=True))
            )
    validator = Draft202012Validator(
        {"$ref": "#/components/schemas/JobOut", "components": schema["components"]}
    )
    events = follow.jobs()
    ids = [int(event.id) for event in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert ids[0] > int(follow.events[0].id)
    for event in events:
        validator.validate(event.job)
    names = {event.name for event in events}
    # Changes of one job read together are sent as the last of them: `created` may be merged.
    assert "completed" in names and names <= {"created", "started", "progress", "completed"}
    for job_id, images in zip(created, (2, 3), strict=True):
        seen = [len(event.job["imageUrls"]) for event in events if event.job["jobId"] == job_id]
        assert seen == sorted(seen) and seen[-1] == images


async def test_a_client_resumes_after_a_server_restart_without_a_gap_or_a_repeat(database_url, spawn, pool):
    """A client that read up to an event, while the server was killed and jobs went on
    changing without it, reconnects to the restarted server with Last-Event-ID and is sent
    every job that changed after that event, in its final state, and no event it had."""
    port = free_port()
    env = service_env(database_url, port)
    base = f"http://127.0.0.1:{port}"
    server = spawn("server.py", env=env)
    spawn("worker.py", env=env)
    await wait_ready(base, server)
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        async with following(base) as follow:
            first = (await http.post("/generations", json={"numImages": 1})).json()["jobId"]
            await follow.until(finished(first, 1))
    applied = follow.jobs()[-1].id
    server.kill()
    server.wait()
    later = [str(job_id) for job_id in await insert_generations(pool, 3, num_images=2)]

    async def all_done() -> bool:
        return await pool.fetchval("SELECT count(*) FROM finished_jobs WHERE status = 'completed'") == 4

    await wait_for(all_done, timeout=30)
    server = spawn("server.py", env=env)
    await wait_ready(base, server)
    async with following(base, last_event_id=applied) as resumed:
        await resumed.until(lambda events: all(finished(job, 2)(events) for job in later))
        assert resumed.events[0].name == "ready" and resumed.events[0].job == {"resumed": True}
        assert resumed.events[0].id == applied
    events = resumed.jobs()
    assert all(int(event.id) > int(applied) for event in events)
    assert first not in {event.job["jobId"] for event in events}
    last_event = await pool.fetchval("SELECT max(id) FROM job_events")
    assert max(int(event.id) for event in events) == last_event


async def test_an_event_committed_late_with_a_lower_id_is_not_skipped(service, database_url, pool):
    """A transaction that took an event id and has not committed holds the stream back: an
    event with a higher id committed meanwhile is not sent before it commits; then both jobs'
    changes come, in id order: nothing is lost to the order in which transactions commit."""
    async with following(service) as follow:
        slow = await asyncpg.connect(database_url)
        try:
            transaction = slow.transaction()
            await transaction.start()
            [early] = await generations.create_many(slow, [generations.Request(1, "owl", 3)])
            [late] = await insert_generations(pool, 1, num_images=1)
            await wait_for(_job_finished(pool, late), timeout=20)
            await asyncio.sleep(1)  # time enough for the stream to send what it may
            assert follow.jobs() == [], "an event was sent past an uncommitted lower id"
            await transaction.commit()
        finally:
            await slow.close()
        await follow.until(finished(str(early.id), 1))
        await follow.until(finished(str(late), 1))
    events = follow.jobs()
    ids = [int(event.id) for event in events]
    assert ids == sorted(ids)


async def test_an_event_id_rolled_back_does_not_stop_the_stream(service, database_url, pool):
    """A transaction that took an event id and rolled back leaves a gap for good: once it has
    ended, the stream passes over the gap and sends the events after it."""
    async with following(service) as follow:
        slow = await asyncpg.connect(database_url)
        try:
            transaction = slow.transaction()
            await transaction.start()
            await generations.create_many(slow, [generations.Request(1, "owl", 3)])
            [late] = await insert_generations(pool, 1, num_images=1)
            await transaction.rollback()
        finally:
            await slow.close()
        await follow.until(finished(str(late), 1))
    assert {event.job["jobId"] for event in follow.jobs()} == {str(late)}


def _job_finished(pool: asyncpg.Pool, job_id) -> Callable[[], object]:
    async def check() -> bool:
        return await pool.fetchval("SELECT status FROM jobs WHERE id = $1", job_id) == "completed"

    return check


async def test_a_stream_resumes_from_the_query_parameter_and_refuses_ids_it_never_issued(service):
    """`?lastEventId=` resumes like the header (a page's new EventSource cannot send
    headers); an event id that is not a number is a 422 naming where it came from."""
    async with httpx.AsyncClient(base_url=service, timeout=10) as http:
        bad_header = await http.get("/generations/events", headers={"Last-Event-ID": "pending.0"})
        bad_query = await http.get("/generations/events", params={"lastEventId": "-1"})
        async with http.stream("GET", "/generations/events", params={"lastEventId": "0"}) as response:
            ready = await anext(read_events(response))
    assert bad_header.status_code == 422 and "Last-Event-ID" in bad_header.json()["detail"]
    assert bad_query.status_code == 422 and "lastEventId" in bad_query.json()["detail"]
    assert (ready.name, ready.id, ready.job) == ("ready", "0", {"resumed": True})


async def test_the_queue_overview_counts_waiting_running_workers_and_recent_failures(service, pool):
    """GET /queue, per kind: jobs waiting, running and due, and how long the oldest due one
    has waited; the live worker (the test's worker process, running generations and webhook
    deliveries); failures
    of the last hour, final and retrying."""

    async def worker_live() -> bool:
        return await pool.fetchval("SELECT count(*) FROM live_workers") == 1

    await wait_for(worker_live)
    later = datetime.now(UTC) + timedelta(hours=1)
    scheduled = await queue.enqueue(pool, [queue.NewJob("generate", run_at=later) for _ in range(3)])
    await set_status(pool, list(scheduled)[:1], "processing")
    tests = await insert_jobs(pool, 4)
    await pool.execute("UPDATE job_queue SET run_at = now() - interval '1 minute' WHERE kind = 'test'")
    await set_status(pool, tests[:1], "failed", error="boom")
    await pool.execute("UPDATE job_queue SET error = 'again' WHERE id = $1", tests[1])
    async with httpx.AsyncClient(base_url=service, timeout=10) as http:
        answer = await http.get("/queue")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    kinds = {kind.pop("kind"): kind for kind in body["kinds"]}
    assert kinds["generate"] == {"pending": 2, "processing": 1, "due": 0, "longestWaitSeconds": None}
    assert (kinds["test"]["pending"], kinds["test"]["processing"], kinds["test"]["due"]) == (3, 0, 3)
    assert kinds["test"]["longestWaitSeconds"] >= 60
    assert body["failuresLastHour"] == {"failed": 1, "retrying": 1}
    [worker] = body["workers"]
    assert worker["kinds"] == ["generate", "webhook"] and worker["processingJobs"] == 0


@pytest.fixture
async def keyed_service(database_url, spawn) -> AsyncIterator[str]:
    """A server (AUTH=keys, stream tokens valid 2 s) and a worker; the base URL."""
    port = free_port()
    env = {**service_env(database_url, port), "AUTH": "keys", "STREAM_TOKEN_TTL": "2"}
    server = spawn("server.py", env=env)
    spawn("worker.py", env=env)
    base = f"http://127.0.0.1:{port}"
    await wait_ready(base, server)
    yield base


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_with_keys_a_stream_opens_with_a_token_and_shows_only_the_keys_jobs(keyed_service, pool):
    """With AUTH=keys: the stream refuses a request with no key or a made-up token (401); a
    token from POST /generations/events/token opens it for that key, which sees its own jobs
    only, with signed image URLs that load without a key; an admin key sees every job."""
    alice, _ = await keys.create(pool, name="alice", admin=False, rate=1000, burst=1000, max_pending=None)
    bob, _ = await keys.create(pool, name="bob", admin=False, rate=1000, burst=1000, max_pending=None)
    root, _ = await keys.create(pool, name="root", admin=True, rate=1000, burst=1000, max_pending=None)
    async with httpx.AsyncClient(base_url=keyed_service, timeout=10) as http:
        assert (await http.get("/generations/events")).status_code == 401
        made_up = await http.get("/generations/events", params={"token": "1.9999999999.bogus"})
        assert made_up.status_code == 401 and made_up.json()["type"] == "/problems/unauthorized"
        issued = await http.post("/generations/events/token", headers=bearer(alice))
        assert issued.status_code == 200 and issued.json()["expiresIn"] == 2
        async with (
            following(keyed_service, token=issued.json()["token"]) as mine,
            following(keyed_service, headers=bearer(root)) as everyone,
        ):
            theirs = (await http.post("/generations", json={"numImages": 1}, headers=bearer(bob))).json()
            own = (await http.post("/generations", json={"numImages": 1}, headers=bearer(alice))).json()
            await mine.until(finished(own["jobId"], 1))
            await everyone.until(
                lambda events: finished(theirs["jobId"], 1)(events) and finished(own["jobId"], 1)(events)
            )
            later = (await http.post("/generations", json={"numImages": 1}, headers=bearer(alice))).json()
            await mine.until(finished(later["jobId"], 1))
        image = await http.get(mine.jobs()[-1].job["imageUrls"][0])
    assert {event.job["jobId"] for event in mine.jobs()} == {own["jobId"], later["jobId"]}
    assert "sig=" in mine.jobs()[-1].job["imageUrls"][0]
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"


async def test_a_stream_token_expires_and_dies_with_its_key(keyed_service, pool):
    """A stream token opens nothing once STREAM_TOKEN_TTL has passed, nor once its key is
    revoked (401 either way); a fresh token from a live key works."""
    alice, _ = await keys.create(pool, name="alice", admin=False, rate=1000, burst=1000, max_pending=None)
    async with httpx.AsyncClient(base_url=keyed_service, timeout=10) as http:
        old = (await http.post("/generations/events/token", headers=bearer(alice))).json()["token"]
        await asyncio.sleep(2.5)
        assert (await http.get("/generations/events", params={"token": old})).status_code == 401
        fresh = (await http.post("/generations/events/token", headers=bearer(alice))).json()["token"]
        async with following(keyed_service, token=fresh) as follow:
            assert follow.events[0].name == "ready"
        await keys.revoke(pool, name="alice")
        assert (await http.get("/generations/events", params={"token": fresh})).status_code == 401


async def test_with_keys_the_queue_is_for_admins_and_the_page_is_public(keyed_service, pool):
    """GET /queue answers an admin key and refuses another (403 admin-only); the dashboard's
    page and files need no key (the page asks for one)."""
    alice, _ = await keys.create(pool, name="alice", admin=False, rate=1000, burst=1000, max_pending=None)
    root, _ = await keys.create(pool, name="root", admin=True, rate=1000, burst=1000, max_pending=None)
    async with httpx.AsyncClient(base_url=keyed_service, timeout=10) as http:
        refused = await http.get("/queue", headers=bearer(alice))
        allowed = await http.get("/queue", headers=bearer(root))
        anonymous = await http.get("/queue")
        pages = [await http.get(path) for path in ("/", "/static/app.css", "/static/js/main.js")]
    assert refused.status_code == 403 and refused.json()["type"] == "/problems/admin-only"
    assert allowed.status_code == 200 and anonymous.status_code == 401
    assert [page.status_code for page in pages] == [200, 200, 200]


def test_the_feed_bench_delivers_every_event_to_every_follower(admin_url):
    """bench/feed.py --quick (1 and 3 followers of a real server) prints its figures, and
    every follower received an event for every job committed."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "feed.py"),
            "--quick",
            "--followers",
            "1,3",
            "--dsn-admin",
            admin_url,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])["figures"]
    for followers in (1, 3):
        row = figures[f"followers_{followers}"]
        assert row["events_delivered"] == row["events_expected"] == row["jobs"] * followers
        assert row["p99_ms"] >= row["p50_ms"] > 0
