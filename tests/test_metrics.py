"""Prometheus metrics of the server and the worker, after a scripted run."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.queue.kinds import Exponential, Fail, Job, Retry
from app.queue.worker import Timing, Worker
from tests.support import free_port, insert_jobs, make_kind, set_status, wait_for


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from Prometheus text."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scripted(pool):
    """A generation handler: cat completes; dog fails for good; fox fails once, then completes;
    owl hangs."""

    async def handle(job: Job) -> None:
        animal = await pool.fetchval("SELECT animal FROM generations WHERE job_id = $1", job.id)
        if animal == "dog":
            raise Fail("dogs are not drawn today")
        if animal == "fox" and job.attempts == 1:
            raise Retry("the fox ran off")
        if animal == "owl":
            await asyncio.sleep(3600)

    return handle


async def test_a_scripted_run_shows_exactly_its_counts_on_worker_and_server(client, pool, database_url):
    """After one completed, one failed, one retried-then-completed and one canceled job, the
    worker's metrics count exactly those claims and outcomes with a pickup and a run time per
    claim, and the server's count its requests by route and status and show an empty queue."""
    worker = Worker(
        pool=pool,
        listen_url=database_url,
        kinds=[make_kind(scripted(pool), name="generate", backoff=Exponential(base=0.05, cap=0.1))],
        timing=Timing(poll_interval=3600, lease_seconds=30, shutdown_grace=0),
    )
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.listener.connected.wait(), 10)
    locations = {}
    for animal in ("cat", "dog", "fox", "owl"):
        response = await client.post("/generations", json={"numImages": 1, "animal": animal})
        locations[animal] = response.headers["location"]

    async def settled() -> bool:
        statuses = {
            animal: (await client.get(location)).json()["status"] for animal, location in locations.items()
        }
        return statuses == {"cat": "completed", "dog": "failed", "fox": "completed", "owl": "processing"}

    await wait_for(settled, timeout=10)
    assert (await client.post(f"{locations['owl']}/cancel")).status_code == 200
    await wait_for(lambda: _idle(worker), timeout=2)
    worker.stop()
    await running

    values = samples(generate_latest(worker.metrics.registry).decode())
    generate = ("kind", "generate")
    jobs = {
        event: values[("menagerie_worker_jobs_total", (("event", event), generate))]
        for event in (
            "claimed",
            "completed",
            "failed",
            "retried",
            "canceled",
            "reclaimed",
            "handed_back",
            "lost",
        )
    }
    assert jobs == {
        "claimed": 5,
        "completed": 2,
        "failed": 1,
        "retried": 1,
        "canceled": 1,
        "reclaimed": 0,
        "handed_back": 0,
        "lost": 0,
    }
    assert values[("menagerie_worker_pickup_seconds_count", (generate,))] == 5
    assert values[("menagerie_worker_run_seconds_count", (generate,))] == 5
    assert values[("menagerie_worker_jobs_in_flight", (generate,))] == 0
    assert values[("menagerie_worker_claim_seconds_count", ())] >= 4

    server = samples((await client.get("/metrics")).text)
    assert (
        server[
            (
                "menagerie_http_requests_total",
                (("method", "POST"), ("route", "/generations"), ("status", "202")),
            )
        ]
        == 4
    )
    assert (
        server[
            (
                "menagerie_http_requests_total",
                (("method", "POST"), ("route", "/generations/{job_id}/cancel"), ("status", "200")),
            )
        ]
        == 1
    )
    assert (
        server[("menagerie_http_request_seconds_count", (("method", "POST"), ("route", "/generations")))] == 4
    )
    assert server[("menagerie_queue_jobs", (("status", "pending"),))] == 0
    assert server[("menagerie_queue_jobs", (("status", "processing"),))] == 0
    assert server[("menagerie_queue_oldest_pending_seconds", ())] == 0
    assert server[("menagerie_http_open_event_streams", ())] == 0


async def _idle(worker: Worker) -> bool:
    return not worker._running


async def test_the_queue_gauges_show_waiting_work_and_its_age(client, pool):
    """With generations pending (one due for a minute, one due now, one not due for an hour
    though created a day ago) and one processing, the server's gauges show the depth by status
    and how long the oldest due job has waited since it fell due; jobs of other kinds, however
    many and however old, are not counted."""
    await pool.execute(
        "WITH new (run_at, created_at, running) AS (VALUES "
        "    (now() - interval '60 seconds', now() - interval '1 hour', false), (now(), now(), false), "
        "    (now() + interval '1 hour', now() - interval '1 day', false), (now(), now(), true)), "
        "ids AS (SELECT gen_random_uuid() AS id, * FROM new), "
        "g AS (INSERT INTO generations (job_id, animal, num_images) SELECT id, 'cat', 1 FROM ids) "
        "INSERT INTO job_queue (id, kind, run_at, created_at, worker_id, attempts, lease_expires_at, started_at) "
        "SELECT id, 'generate', run_at, created_at, CASE WHEN running THEN 'w' END, running::int, "
        "       CASE WHEN running THEN now() + interval '30 seconds' END, CASE WHEN running THEN now() END FROM ids"
    )
    others = await insert_jobs(pool, 20, kind="other")
    await pool.execute("UPDATE job_queue SET run_at = now() - interval '1 day' WHERE kind = 'other'")
    await set_status(pool, others[:5], "processing")
    server = samples((await client.get("/metrics")).text)
    assert server[("menagerie_queue_jobs", (("status", "pending"),))] == 3
    assert server[("menagerie_queue_jobs", (("status", "processing"),))] == 1
    # Due 60 s before the insert; the scrape follows within a few round trips, so 60 s plus
    # room for a loaded machine. Measured from created_at it would read an hour or a day.
    assert 60 <= server[("menagerie_queue_oldest_pending_seconds", ())] < 75


async def test_unknown_paths_are_counted_without_their_path(client):
    """Requests to unknown paths count under route="unmatched", so ids never become labels."""
    await client.get("/no/such/thing/123")
    server = samples((await client.get("/metrics")).text)
    assert (
        server[
            ("menagerie_http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))
        ]
        == 1
    )


async def test_a_worker_process_serves_its_metrics_on_its_port(database_url, spawn):
    """worker.py with WORKER_METRICS_PORT serves Prometheus text there, listener included."""
    port = free_port()
    spawn(
        "worker.py",
        env={"DATABASE_URL": database_url, "AUTO_MIGRATE": "false", "WORKER_METRICS_PORT": str(port)},
    )
    async with httpx.AsyncClient(timeout=2) as http:

        async def serving() -> bool:
            try:
                return (await http.get(f"http://127.0.0.1:{port}/metrics")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(serving, timeout=20, interval=0.1)
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    values = samples(text)
    assert values[("menagerie_worker_jobs_total", (("event", "claimed"), ("kind", "generate")))] == 0
    assert ("menagerie_worker_listener_reconnects_total", ()) in values
