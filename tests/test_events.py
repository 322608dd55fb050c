"""Server-Sent Events over real HTTP from a real server, with a real worker making images."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest

from tests.support import free_port, wait_for, wait_ready


@dataclass
class Event:
    name: str
    id: str
    job: dict


async def read_events(response: httpx.Response, *, limit: int | None = None) -> AsyncIterator[Event]:
    """Parse a text/event-stream into events (comments and `retry:` lines are skipped)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in fields:
                yield Event(fields.get("event", "message"), fields.get("id", ""), json.loads(fields["data"]))
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")


@pytest.fixture
async def service(database_url, spawn) -> AsyncIterator[str]:
    """A server and a worker (images take 0.3 s each) on a fresh database; the base URL."""
    port = free_port()
    env = {
        "DATABASE_URL": database_url,
        "AUTO_MIGRATE": "false",
        "PORT": str(port),
        "IMAGE_PROVIDER_DELAY": "0.3",
        "IMAGE_SIZE": "64",
        "SSE_HEARTBEAT": "0.5",
        "DB_POOL_SIZE": "5",
    }
    server = spawn("server.py", env=env)
    spawn("worker.py", env=env)
    base = f"http://127.0.0.1:{port}"
    await wait_ready(base, server)
    yield base


@pytest.mark.smoke
async def test_a_stream_shows_the_job_go_from_pending_to_completed_with_each_image(service):
    """A client streaming a new job sees the job at once, then `processing`, one `image` event
    per image in order, then `completed`, and the stream closes."""
    async with httpx.AsyncClient(base_url=service, timeout=30) as http:
        location = (await http.post("/generations", json={"numImages": 3})).headers["location"]
        async with http.stream("GET", f"{location}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            seen = [event async for event in read_events(response)]
    assert (seen[0].name, seen[0].job["status"]) in {
        ("job", "pending"),
        ("job", "processing"),
    }
    names = [event.name for event in seen]
    assert names[-1] == "status" and seen[-1].job["status"] == "completed"
    already = int(seen[0].id.split(".")[1])
    image_events = [event for event in seen if event.name == "image"]
    assert [event.id for event in image_events] == [f"processing.{n}" for n in range(already + 1, 4)]
    assert all(len(event.job["imageUrls"]) >= int(event.id.split(".")[1]) for event in image_events)
    assert len({event.id for event in seen}) == len(seen), "every event has its own id"
    statuses = [event.job["status"] for event in seen if event.name in {"job", "status"}]
    assert statuses == sorted(statuses, key=["pending", "processing", "completed"].index)


async def test_a_client_that_reconnects_with_last_event_id_misses_nothing(service):
    """A client that drops after the first image and reconnects later with Last-Event-ID is
    sent every image it missed and the final status, and nothing it had already."""
    async with httpx.AsyncClient(base_url=service, timeout=30) as http:
        location = (await http.post("/generations", json={"numImages": 4})).headers["location"]
        first: list[Event] = []
        async with http.stream("GET", f"{location}/events") as response:
            async for event in read_events(response):
                first.append(event)
                if event.name == "image":
                    break
        await wait_for(lambda: _completed(http, location), timeout=30)
        headers = {"Last-Event-ID": first[-1].id}
        async with http.stream("GET", f"{location}/events", headers=headers) as response:
            rest = [event async for event in read_events(response)]
    assert first[-1].id == "processing.1"
    assert [event.id for event in rest] == ["processing.2", "processing.3", "processing.4", "completed.4"]
    assert rest[-1].job["status"] == "completed" and len(rest[-1].job["imageUrls"]) == 4


async def _completed(http: httpx.AsyncClient, location: str) -> bool:
    return (await http.get(location)).json()["status"] == "completed"


async def test_a_stream_of_a_finished_job_sends_it_and_closes(service):
    """Streaming a job that is already terminal sends the one event and ends."""
    async with httpx.AsyncClient(base_url=service, timeout=30) as http:
        created = await http.post("/generations", json={"numImages": 1}, headers={"Prefer": "wait=10"})
        location = created.headers["location"]
        async with http.stream("GET", f"{location}/events") as response:
            events = [event async for event in read_events(response)]
        missing = await http.get("/generations/00000000-0000-0000-0000-000000000000/events")
    assert [(event.name, event.job["status"]) for event in events] == [("job", "completed")]
    assert missing.status_code == 404


async def test_500_open_streams_hold_a_bounded_number_of_database_connections(service, database_url):
    """500 concurrent streams on one server share its one LISTEN connection and its small
    pool: the server's connections to the database (application_name menagerie-server) stay
    at most DB_POOL_SIZE + 1."""
    limits = httpx.Limits(max_connections=600, max_keepalive_connections=600)
    async with httpx.AsyncClient(base_url=service, timeout=60, limits=limits) as http:
        await http.post("/generations", json={"numImages": 10})  # keeps the worker busy
        pending = [
            (await http.post("/generations", json={"numImages": 1})).headers["location"] for _ in range(10)
        ]
        opened = asyncio.Event()
        first_events = 0

        async def follow(location: str) -> None:
            nonlocal first_events
            async with http.stream("GET", f"{location}/events") as response:
                async for _ in read_events(response):
                    first_events += 1
                    if first_events == 500:
                        opened.set()
                    await asyncio.sleep(3600)

        streams = [asyncio.create_task(follow(pending[i % 10])) for i in range(500)]
        try:
            await asyncio.wait_for(opened.wait(), 60)
            conn = await asyncpg.connect(database_url)
            try:
                server_connections = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'menagerie-server'"
                )
                worker_connections = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'menagerie-worker'"
                )
            finally:
                await conn.close()
        finally:
            for stream in streams:
                stream.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
    assert 1 <= server_connections <= 5 + 1
    assert worker_connections >= 1  # its LISTEN connection at least, named as its own
