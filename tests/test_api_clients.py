"""What API clients expect: idempotent retries, waiting instead of polling, backpressure,
conditional GET and request ids. In process, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest

from app.api.backlog import Backlog
from app.images import generate
from app.images.providers.local import LocalProvider
from app.queue.worker import Timing, Worker
from app.settings import Settings
from tests.support import api_client, insert_generations, insert_jobs, wait_for_earlier_notifications


async def job_count(pool: asyncpg.Pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM jobs")


async def post(client: httpx.AsyncClient, body: dict, **headers: str) -> httpx.Response:
    return await client.post("/generations", json=body, headers=headers)


# Idempotency-Key


async def test_two_concurrent_posts_with_one_idempotency_key_make_one_job(client, pool):
    """Two requests racing with the same Idempotency-Key and body get the same job; one row."""
    first, second = await asyncio.gather(
        post(client, {"numImages": 2}, **{"Idempotency-Key": "race-1"}),
        post(client, {"numImages": 2}, **{"Idempotency-Key": "race-1"}),
    )
    assert first.status_code == second.status_code == 202
    assert first.json()["jobId"] == second.json()["jobId"]
    assert await job_count(pool) == 1


async def test_a_retried_post_returns_the_same_job_and_says_so(client, pool):
    """A retry with the same key and body answers with the original job, marked replayed."""
    first = await post(client, {"numImages": 1, "animal": "owl"}, **{"Idempotency-Key": "k-1"})
    again = await post(client, {"animal": "owl", "numImages": 1}, **{"Idempotency-Key": "k-1"})
    assert again.status_code == 202 and again.json()["jobId"] == first.json()["jobId"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["location"] == first.headers["location"]
    assert await job_count(pool) == 1


async def test_a_key_reused_with_another_body_is_refused(client, pool):
    """The same key with a different body answers 422 problem+json and creates nothing."""
    await post(client, {"numImages": 1}, **{"Idempotency-Key": "k-2"})
    other = await post(client, {"numImages": 2}, **{"Idempotency-Key": "k-2"})
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["type"] == "/problems/idempotency-key-reused"
    assert await job_count(pool) == 1


async def test_an_expired_key_can_be_used_again(client, pool):
    """Once a key is older than IDEMPOTENCY_TTL, the same key makes a new job."""
    first = await post(client, {"numImages": 1}, **{"Idempotency-Key": "k-3"})
    await pool.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
    second = await post(client, {"numImages": 1}, **{"Idempotency-Key": "k-3"})
    assert second.json()["jobId"] != first.json()["jobId"]
    assert await job_count(pool) == 2


@pytest.mark.parametrize("key", ["", "x" * 256])
async def test_an_empty_or_overlong_key_is_a_bad_request(client, pool, key):
    """An Idempotency-Key that is empty or over 255 characters answers 400 and creates nothing."""
    response = await post(client, {"numImages": 1}, **{"Idempotency-Key": key})
    assert response.status_code == 400
    assert await job_count(pool) == 0


# Prefer: wait


@pytest.fixture
async def worker(pool: asyncpg.Pool, database_url: str) -> AsyncIterator[Worker]:
    """An in-process worker whose images take 0.25 s each."""
    kind = generate.kind(pool, LocalProvider(delay=0.25, size=64))
    running = Worker(
        pool=pool,
        listen_url=database_url,
        kinds=[replace(kind, slots=2)],
        timing=Timing(poll_interval=3600, lease_seconds=30, shutdown_grace=0),
    )
    task = asyncio.create_task(running.run())
    await asyncio.wait_for(running.listener.connected.wait(), 10)
    yield running
    running.stop()
    running.stop()
    await task


ROOM = 1.0
"""Seconds a timing bound allows on top of what the mechanism takes (the images' delay): the
worker runs in the test's own event loop, on a 2-core machine shared with PostgreSQL and other
load. The rest takes about 0.1 s here; ten times that is room, and a wake-up a second or more
late still shows."""


async def test_prefer_wait_returns_the_finished_job_in_one_round_trip(client, worker):
    """`Prefer: wait=5` on POST holds the answer until a 1 s job completes, and says so."""
    started = time.monotonic()
    response = await post(client, {"numImages": 4}, Prefer="wait=5")
    assert response.status_code == 202
    assert response.json()["status"] == "completed"
    assert len(response.json()["imageUrls"]) == 4
    assert response.headers["preference-applied"] == "wait=5"
    # Four images of 0.25 s, and the job's completion NOTIFY ends the wait.
    assert time.monotonic() - started < 4 * 0.25 + ROOM


async def test_prefer_wait_on_get_returns_the_current_job_when_time_runs_out(client, worker):
    """`Prefer: wait=1` on GET of a job that needs longer answers after about a second with the
    job still running; a GET without the preference answers at once."""
    created = await post(client, {"numImages": 10})
    location = created.headers["location"]
    started = time.monotonic()
    waited = await client.get(location, headers={"Prefer": "wait=1"})
    elapsed = time.monotonic() - started
    assert waited.status_code == 200 and waited.json()["status"] in {"pending", "processing"}
    assert waited.headers["preference-applied"] == "wait=1"
    assert 0.9 <= elapsed < 1 + ROOM
    plain = await client.get(location)
    assert "preference-applied" not in plain.headers


async def test_prefer_wait_on_get_wakes_when_the_job_finishes(client, worker):
    """A GET waiting on a job returns as soon as it is completed, not at the end of the wait."""
    location = (await post(client, {"numImages": 2})).headers["location"]
    started = time.monotonic()
    response = await client.get(location, headers={"Prefer": "wait=30"})
    assert response.json()["status"] == "completed"
    # Two images of 0.25 s, then the completion NOTIFY wakes the waiting GET; a late wake-up
    # would show as seconds here.
    assert time.monotonic() - started < 2 * 0.25 + ROOM


# Backpressure


@pytest.fixture
async def small_queue_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API with MAX_PENDING_JOBS=3."""
    async with api_client(settings.model_copy(update={"max_pending_jobs": 3})) as http:
        yield http


async def test_backpressure_refuses_work_past_the_pending_limit_and_accepts_below(small_queue_client, pool):
    """With MAX_PENDING_JOBS pending, POST answers 503 problem+json with Retry-After and writes
    nothing; once the queue drains below the limit, POST is accepted again."""
    for _ in range(3):
        assert (await post(small_queue_client, {"numImages": 1})).status_code == 202
    refused = await post(small_queue_client, {"numImages": 1})
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) > 0
    assert await job_count(pool) == 3
    await pool.execute("UPDATE jobs SET status = 'canceled' WHERE id IN (SELECT id FROM jobs LIMIT 1)")
    await asyncio.sleep(1.1)
    assert (await post(small_queue_client, {"numImages": 1})).status_code == 202


async def test_a_burst_never_overshoots_the_pending_limit(settings, pool):
    """With MAX_PENDING_JOBS=5 and nothing running, six POSTs one after another within the
    second the pending count is cached answer 202 five times, then 503: the server adds the
    jobs it creates to its cached count. Six at once are split the same way."""
    async with api_client(settings.model_copy(update={"max_pending_jobs": 5})) as http:
        one_by_one = [(await post(http, {"numImages": 1})).status_code for _ in range(6)]
    assert one_by_one == [202] * 5 + [503]
    assert await job_count(pool) == 5
    await pool.execute("TRUNCATE job_queue, finished_jobs, generations CASCADE")
    async with api_client(settings.model_copy(update={"max_pending_jobs": 5})) as http:
        answers = await asyncio.gather(*(post(http, {"numImages": 1}) for _ in range(6)))
    assert sorted(answer.status_code for answer in answers) == [202] * 5 + [503]
    assert await job_count(pool) == 5


async def test_a_backlog_of_another_kind_never_refuses_a_generation(small_queue_client, pool):
    """MAX_PENDING_JOBS counts waiting generations only: thousands of waiting jobs of another
    kind (webhook deliveries, say) leave POST /generations accepting work."""
    await insert_jobs(pool, 2_000, kind="other")
    await asyncio.sleep(1.1)  # the pending count is re-read at most once a second
    for _ in range(3):
        assert (await post(small_queue_client, {"numImages": 1})).status_code == 202


async def transactions_for(settings: Settings, pool: asyncpg.Pool, requests: int, **update: Any) -> list[int]:
    """POST `requests` jobs at once to an app with `update` applied to its settings; return
    how many jobs each transaction that wrote them wrote."""
    await pool.execute("TRUNCATE job_queue, finished_jobs, generations CASCADE")
    async with api_client(settings.model_copy(update=update)) as http:
        answers = await asyncio.gather(*(post(http, {"numImages": 1}) for _ in range(requests)))
    assert [answer.status_code for answer in answers] == [202] * requests
    assert await job_count(pool) == requests
    groups = await pool.fetch("SELECT count(*) AS jobs FROM job_queue GROUP BY xmin::text")
    return [row["jobs"] for row in groups]


async def test_concurrent_posts_share_inserts_unless_insert_batch_max_is_one(settings, pool):
    """Forty POSTs at once are written by fewer transactions than requests (one INSERT, one
    commit, one NOTIFY per group), no group larger than INSERT_BATCH_MAX; with
    INSERT_BATCH_MAX=1 each job has its own transaction."""
    assert len(await transactions_for(settings, pool, 40)) < 40
    capped = await transactions_for(settings, pool, 40, insert_batch_max=10)
    assert max(capped) <= 10 and len(capped) < 40
    assert await transactions_for(settings, pool, 40, insert_batch_max=1) == [1] * 40


async def test_job_max_attempts_is_written_on_each_new_job(settings, pool):
    """JOB_MAX_ATTEMPTS is the server's to apply: a job POSTed under JOB_MAX_ATTEMPTS=5 carries
    max_attempts 5 (the workers read it from the row, never from their own settings)."""
    async with api_client(settings.model_copy(update={"job_max_attempts": 5})) as http:
        job_id = (await post(http, {"numImages": 1})).json()["jobId"]
    assert await pool.fetchval("SELECT max_attempts FROM jobs WHERE id = $1", UUID(job_id)) == 5


class CountingPool:
    """The real pool, counting the statements sent through it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.statements = 0

    async def fetchval(self, *args: Any) -> Any:
        self.statements += 1
        return await self.pool.fetchval(*args)


async def test_requests_that_find_the_pending_count_stale_share_one_read(pool):
    """Fifty requests arriving while the pending count is stale send one count to PostgreSQL,
    not fifty (a burst of POSTs once a second was a burst of counts), and all get its answer."""
    await insert_generations(pool, 5)
    counting = CountingPool(pool)
    backlog = Backlog(5)
    answers = await asyncio.gather(*(backlog.full(counting) for _ in range(50)))
    assert answers == [True] * 50
    assert counting.statements == 1
    assert await Backlog(6).full(counting) is False
    assert counting.statements == 2


class SlowPool(CountingPool):
    """The real pool, whose reads wait until `go` is set."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.go = asyncio.Event()

    async def fetchval(self, *args: Any) -> Any:
        await self.go.wait()
        return await super().fetchval(*args)


async def test_a_stale_count_that_admits_is_read_again_without_making_requests_wait(pool):
    """Once the pending count is stale, a request the last count admits is answered at once
    while the count is read again in the background, and later requests get the new count; a
    request the last count refuses waits for the new read (a drained queue admits it)."""
    await insert_generations(pool, 2)
    slow = SlowPool(pool)
    backlog = Backlog(3, max_age=0)
    slow.go.set()
    assert await backlog.full(slow) is False  # the first read is awaited: 2 waiting
    slow.go.clear()
    await insert_generations(pool, 1)
    assert await asyncio.wait_for(backlog.full(slow), 1) is False  # stale 2 < 3: not waited for
    assert slow.statements == 1  # the first read only: the one in the background is held
    slow.go.set()
    answers = [await backlog.full(slow)]
    while not answers[-1] and len(answers) < 100:  # until the read in the background is in
        await asyncio.sleep(0.01)
        answers.append(await backlog.full(slow))
    assert answers[-1] is True  # the new read: 3 waiting
    await pool.execute("UPDATE jobs SET status = 'canceled' WHERE id IN (SELECT id FROM jobs LIMIT 1)")
    slow.go.clear()
    refusing = asyncio.ensure_future(backlog.full(slow))
    await asyncio.sleep(0.05)
    assert not refusing.done()  # the stale count (3) would refuse: it waits for the read
    slow.go.set()
    assert await refusing is False


# Conditional GET and request ids


async def test_a_job_carries_an_etag_and_if_none_match_gets_304_until_it_changes(client, pool):
    """GET of a job has an ETag; sending it back answers 304 with no body, and once the job
    changes the same ETag gets the new job with a new ETag."""
    location = (await post(client, {"numImages": 1})).headers["location"]
    first = await client.get(location)
    etag = first.headers["etag"]
    cached = await client.get(location, headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.content == b""
    await pool.execute("UPDATE jobs SET status = 'canceled', updated_at = now()")
    changed = await client.get(location, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag


async def test_request_ids_are_echoed_or_made_and_appear_in_problems(client):
    """A sane X-Request-ID is echoed; without one the server makes one; problem bodies carry it."""
    given = await client.get("/animals", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = await client.get("/animals")
    assert len(made.headers["x-request-id"]) >= 16
    problem = await client.get("/generations/nope", headers={"X-Request-ID": "trace-9"})
    assert problem.json()["requestId"] == "trace-9"
    insane = await client.get("/animals", headers={"X-Request-ID": "bad id with spaces"})
    assert insane.headers["x-request-id"] != "bad id with spaces"


# Grouped inserts


async def test_concurrent_posts_are_written_together_each_getting_its_own_job(client, pool, database_url):
    """50 POSTs at once each get their own job with their own animal, and are written by fewer
    INSERT statements than requests (each statement sends one NOTIFY, counted here)."""
    from app.db import JOBS_CHANNEL

    notified: list[str] = []
    listener = await asyncpg.connect(database_url)
    await listener.add_listener(JOBS_CHANNEL, lambda *args: notified.append(args[-1]))
    animals = ["bear", "cat", "dog", "fox", "owl"] * 10
    try:
        responses = await asyncio.gather(
            *(post(client, {"numImages": 1 + i % 3, "animal": animal}) for i, animal in enumerate(animals))
        )
        await wait_for_earlier_notifications(pool, JOBS_CHANNEL, notified)
    finally:
        await listener.close()
    assert [response.status_code for response in responses] == [202] * 50
    assert [response.json()["animal"] for response in responses] == animals
    assert [response.json()["numImages"] for response in responses] == [1 + i % 3 for i in range(50)]
    assert len({response.json()["jobId"] for response in responses}) == 50
    assert await job_count(pool) == 50
    assert 1 <= len(notified) < 50


async def test_a_number_too_long_to_parse_is_a_bad_request(client, pool):
    """A body whose number has more digits than JSON parsing allows answers 400, not 500."""
    body = b'{"numImages": 1' + b"0" * 5000 + b"}"
    response = await client.post("/generations", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert await job_count(pool) == 0


async def test_a_retry_with_its_key_gets_its_job_even_when_the_queue_is_full(small_queue_client, pool):
    """Backpressure refuses new work, not replays: a retried POST with its Idempotency-Key
    answers with its job while MAX_PENDING_JOBS are waiting."""
    first = await post(small_queue_client, {"numImages": 1}, **{"Idempotency-Key": "full-1"})
    for _ in range(2):
        await post(small_queue_client, {"numImages": 1})
    await asyncio.sleep(1.1)
    assert (await post(small_queue_client, {"numImages": 1})).status_code == 503
    again = await post(small_queue_client, {"numImages": 1}, **{"Idempotency-Key": "full-1"})
    assert again.status_code == 202 and again.json()["jobId"] == first.json()["jobId"]
    assert await job_count(pool) == 3


async def test_the_server_logs_carry_the_request_id(client, capsys):
    """What the server logs while handling a request carries that request's X-Request-ID."""
    import json
    import logging

    from app import logs

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure("INFO", "json")
        await post(client, {"numImages": 1}, **{"X-Request-ID": "trace-log-1"})
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    created = [record for record in records if record.get("action") == "job_created"]
    assert created and created[0]["request_id"] == "trace-log-1"
