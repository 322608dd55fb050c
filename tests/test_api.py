"""Contract tests of the HTTP API as docs/API.md fixes it, against real PostgreSQL.

Covers what exists now: creating, reading and listing jobs, serving images, the catalogue,
health checks, and the problem+json answers to bad requests (each of which must leave
`jobs` empty).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import jsonschema
import pytest
from PIL import Image

from app.api.models import JobOut, job_json, jobs_json
from app.images.generations import Generation
from app.queue.kinds import Status
from app.settings import Settings
from tests import support
from tests.support import api_client, insert_generations

BASE_URL = "http://menagerie.test"
MAX_IMAGES = 10
JOB_FIELDS = {"jobId", "status", "numImages", "animal", "imageUrls", "createdAt", "updatedAt", "error"}
EXTRA_JOB_FIELDS = {
    "attempts",
    "startedAt",
    "finishedAt",
    "webhook",
    "webhookEvents",
    "prompt",
    "provider",
    "model",
}
PROBLEM_FIELDS = {"type", "title", "status", "detail"}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
NEXT_LINK = re.compile(r'<([^>]+)>;\s*rel="next"')

Job = dict[str, Any]
CreateJob = Callable[..., Awaitable[Job]]
InsertJobs = Callable[[int], Awaitable[list[str]]]
SetStatus = Callable[[list[str], str], Awaitable[None]]
StoreImage = Callable[..., Awaitable[tuple[bytes, str]]]
Paginate = Callable[[str], Awaitable[list[list[Job]]]]
Rejected = Callable[..., Awaitable[dict[str, Any]]]


# Helpers


def media_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip()


def assert_job(job: Job) -> None:
    """A job object has the API.md fields (plus the allowed extras) with the right types."""
    assert JOB_FIELDS <= job.keys() <= JOB_FIELDS | EXTRA_JOB_FIELDS, job.keys()
    UUID(job["jobId"])
    assert job["status"] in {"pending", "processing", "completed", "failed", "canceled"}
    assert isinstance(job["numImages"], int)
    assert isinstance(job["animal"], str)
    assert isinstance(job["imageUrls"], list)
    assert job["error"] is None or isinstance(job["error"], str)


def parse_timestamp(value: str) -> datetime:
    """An RFC 3339 timestamp with an offset, as a timezone-aware datetime."""
    assert RFC3339.match(value), value
    moment = datetime.fromisoformat(value)
    assert moment.tzinfo is not None
    return moment


def next_link(response: httpx.Response) -> str | None:
    link = response.headers.get("link")
    if link is None:
        return None
    match = NEXT_LINK.search(link)
    assert match, link
    return match.group(1)


def error_locs(problem: dict[str, Any]) -> list[list[str]]:
    assert isinstance(problem.get("errors"), list) and problem["errors"], problem
    for error in problem["errors"]:
        assert {"loc", "msg"} <= error.keys(), error
    return [error["loc"] for error in problem["errors"]]


def names(problem: dict[str, Any], field: str) -> bool:
    """Whether some entry of the problem's `errors` has `field` in its `loc`."""
    return any(field in loc for loc in error_locs(problem))


def make_png(color: str = "teal") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def cursor_of(value: Any) -> str:
    """A cursor-shaped token (urlsafe base64 of JSON) this service never issued."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


# Factory fixtures


@pytest.fixture
def create_job(client: httpx.AsyncClient) -> CreateJob:
    """`await create_job(**body)` posts a generation (numImages 1 unless given) and returns it."""

    async def create(**body: Any) -> Job:
        body.setdefault("numImages", 1)
        response = await client.post("/generations", json=body)
        assert response.status_code == 202, response.text
        return response.json()

    return create


@pytest.fixture
def insert_jobs(pool: asyncpg.Pool) -> InsertJobs:
    """`await insert_jobs(n)` inserts n pending jobs in one statement (one shared created_at)."""

    async def insert(count: int) -> list[str]:
        return [str(job_id) for job_id in await insert_generations(pool, count)]

    return insert


@pytest.fixture
def set_status(pool: asyncpg.Pool) -> SetStatus:
    """`await set_status(ids, status)` moves jobs to a status directly in the database."""

    async def update(job_ids: list[str], status: str) -> None:
        await support.set_status(pool, [UUID(job_id) for job_id in job_ids], status)

    return update


@pytest.fixture
def store_image(pool: asyncpg.Pool) -> StoreImage:
    """`await store_image(job_id, idx)` stores a real PNG for the job; returns (png, sha256)."""

    async def store(job_id: str, idx: int = 0) -> tuple[bytes, str]:
        png = make_png()
        digest = hashlib.sha256(png).hexdigest()
        await pool.execute(
            "INSERT INTO images (job_id, idx, png, sha256) VALUES ($1, $2, $3, $4)",
            UUID(job_id),
            idx,
            png,
            digest,
        )
        return png, digest

    return store


@pytest.fixture
def paginate(client: httpx.AsyncClient) -> Paginate:
    """`await paginate(url)` follows `Link: rel="next"` from url; returns every page."""

    async def walk(url: str) -> list[list[Job]]:
        pages: list[list[Job]] = []
        next_url: str | None = url
        while next_url is not None:
            assert len(pages) < 100, "pagination does not end"
            response = await client.get(next_url)
            assert response.status_code == 200, response.text
            assert media_type(response) == "application/json"
            pages.append(response.json())
            next_url = next_link(response)
        return pages

    return walk


@pytest.fixture
def rejected(pool: asyncpg.Pool) -> Rejected:
    """`await rejected(response, status)` checks a problem+json answer and that `jobs` still
    holds no rows (or the `jobs=` a test made itself); returns the problem."""

    async def check(response: httpx.Response, status: int, *, jobs: int = 0) -> dict[str, Any]:
        assert response.status_code == status, response.text
        assert media_type(response) == "application/problem+json"
        problem = response.json()
        assert PROBLEM_FIELDS <= problem.keys(), problem
        assert problem["status"] == status
        assert isinstance(problem["title"], str) and problem["title"]
        assert isinstance(problem["detail"], str) and problem["detail"]
        assert await pool.fetchval("SELECT count(*) FROM jobs") == jobs
        return problem

    return check


# POST /generations


async def test_create_answers_202_with_a_pending_job_and_its_location(
    client: httpx.AsyncClient,
) -> None:
    """POST /generations answers 202, a pending job and `Location: /generations/{jobId}`."""
    response = await client.post("/generations", json={"numImages": 3})

    assert response.status_code == 202, response.text
    assert media_type(response) == "application/json"
    job = response.json()
    assert_job(job)
    assert job["status"] == "pending"
    assert job["numImages"] == 3
    assert job["imageUrls"] == []
    assert job["error"] is None
    assert response.headers["location"] == f"/generations/{job['jobId']}"


async def test_create_timestamps_are_rfc3339_with_an_offset(create_job: CreateJob) -> None:
    """A new job's createdAt and updatedAt are RFC 3339 timestamps with an offset."""
    job = await create_job()

    created, updated = parse_timestamp(job["createdAt"]), parse_timestamp(job["updatedAt"])
    assert created <= updated


async def test_create_picks_an_animal_from_the_catalogue(
    client: httpx.AsyncClient, create_job: CreateJob
) -> None:
    """A job created without an animal already has one, taken from GET /animals."""
    catalogue = (await client.get("/animals")).json()

    job = await create_job()

    assert job["animal"] in catalogue


async def test_create_keeps_the_animal_the_client_named(create_job: CreateJob) -> None:
    """A job created with an animal from the catalogue keeps that animal."""
    job = await create_job(numImages=2, animal="penguin")

    assert job["animal"] == "penguin"


@pytest.mark.smoke
async def test_create_writes_the_row_it_answers_with(pool: asyncpg.Pool, create_job: CreateJob) -> None:
    """The job POST /generations answers with is what it wrote: its job and its generation."""
    job = await create_job(numImages=4)

    row = await pool.fetchrow(
        "SELECT j.*, g.num_images, g.animal FROM jobs j JOIN generations g ON g.job_id = j.id WHERE j.id = $1",
        UUID(job["jobId"]),
    )
    assert row is not None
    assert (row["status"], row["num_images"], row["animal"]) == ("pending", 4, job["animal"])
    assert row["created_at"] == parse_timestamp(job["createdAt"])
    assert row["updated_at"] == parse_timestamp(job["updatedAt"])
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 1


async def test_create_accepts_the_maximum_number_of_images(create_job: CreateJob) -> None:
    """numImages equal to MAX_IMAGES_PER_JOB is accepted."""
    job = await create_job(numImages=MAX_IMAGES)

    assert job["numImages"] == MAX_IMAGES


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"numImages=3",
        b'{"numImages": 1,}',
        b"\xff\xfe\x00",
        b'[{"numImages": 1}]',
        b'"numImages"',
        b"3",
        b"null",
        b"true",
    ],
    ids=[
        "empty",
        "truncated",
        "form",
        "trailing-comma",
        "not-utf8",
        "list",
        "string",
        "number",
        "null",
        "bool",
    ],
)
async def test_create_rejects_a_body_that_is_not_a_json_object(
    client: httpx.AsyncClient, rejected: Rejected, body: bytes
) -> None:
    """A body that is not JSON, or JSON that is not an object, is answered 400."""
    response = await client.post("/generations", content=body, headers={"Content-Type": "application/json"})

    await rejected(response, 400)


async def test_create_rejects_deeply_nested_json_as_a_bad_request(
    client: httpx.AsyncClient, rejected: Rejected
) -> None:
    """JSON nested too deeply to parse (but under 64 KiB) is answered 400, not 500."""
    response = await client.post(
        "/generations", content=b"[" * 60_000, headers={"Content-Type": "application/json"}
    )

    problem = await rejected(response, 400)
    assert problem["detail"] == "the body nests too deeply to be read"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", None, "application/x-www-form-urlencoded"],
    ids=["text", "missing", "form"],
)
async def test_create_rejects_a_content_type_other_than_json(
    client: httpx.AsyncClient, rejected: Rejected, content_type: str | None
) -> None:
    """A POST /generations whose Content-Type is not JSON (or absent) is answered 415."""
    headers = {} if content_type is None else {"Content-Type": content_type}

    response = await client.post("/generations", content=b'{"numImages": 1}', headers=headers)

    await rejected(response, 415)


MISSING = object()


@pytest.mark.parametrize(
    "num_images",
    [MISSING, "3", 3.5, True, None, 0, -1, MAX_IMAGES + 1],
    ids=["missing", "string", "float", "bool", "null", "zero", "negative", "over-max"],
)
async def test_create_rejects_a_bad_num_images_naming_it(
    client: httpx.AsyncClient, rejected: Rejected, num_images: Any
) -> None:
    """numImages missing, not an integer, below 1 or above the maximum is a 422 naming numImages."""
    body = {} if num_images is MISSING else {"numImages": num_images}

    response = await client.post("/generations", json=body)

    problem = await rejected(response, 422)
    assert names(problem, "numImages"), problem


@pytest.mark.parametrize("field", ["colour", "num_images"], ids=["plain", "snake-case-spelling"])
async def test_create_rejects_an_unknown_field_naming_it(
    client: httpx.AsyncClient, rejected: Rejected, field: str
) -> None:
    """An unknown field in the body is a 422 naming that field."""
    response = await client.post("/generations", json={"numImages": 1, field: "x"})

    problem = await rejected(response, 422)
    assert names(problem, field), problem


@pytest.mark.parametrize("animal", ["unicorn", "", "Cat", 7], ids=["unknown", "empty", "case", "number"])
async def test_create_rejects_an_animal_not_in_the_catalogue(
    client: httpx.AsyncClient, rejected: Rejected, animal: Any
) -> None:
    """An animal that is not a catalogue name is a 422 naming animal."""
    response = await client.post("/generations", json={"numImages": 1, "animal": animal})

    problem = await rejected(response, 422)
    assert names(problem, "animal"), problem


async def test_validation_problems_read_as_sentences_without_python_internals(
    client: httpx.AsyncClient, rejected: Rejected
) -> None:
    """A 422's detail is the field and a sentence for people: no "Value error," prefix from
    pydantic, exactly as the README shows it."""
    response = await client.post("/generations", json={"numImages": MAX_IMAGES + 1})

    problem = await rejected(response, 422)
    assert problem["detail"] == f"numImages: Input should be less than or equal to {MAX_IMAGES}"
    assert "Value error" not in response.text and "Traceback" not in response.text


async def test_validation_problems_echo_a_huge_input_only_in_part(
    client: httpx.AsyncClient, rejected: Rejected
) -> None:
    """A 20 KB animal name is refused with an answer that quotes at most a short head of it
    (the answer stays small instead of repeating the input twice)."""
    response = await client.post("/generations", json={"numImages": 1, "animal": "x" * 20_000})

    problem = await rejected(response, 422)
    assert names(problem, "animal"), problem
    assert len(response.content) < 2_000, len(response.content)
    assert "x" * 40 in response.text  # the head of the input is shown, so the client sees which


def padded_body() -> bytes:
    """A valid job request padded with whitespace to just over 64 KiB."""
    body = b'{"numImages": 1}'
    return body[:-1] + b" " * (65_537 - len(body)) + b"}"


async def _in_chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 8192):
        yield data[start : start + 8192]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_create_rejects_a_body_over_64_kib(
    client: httpx.AsyncClient, rejected: Rejected, framing: str
) -> None:
    """A body over 64 KiB is answered 413, whether its length is declared or streamed."""
    body = padded_body()
    assert len(body) > 65_536 and json.loads(body) == {"numImages": 1}
    content = body if framing == "content-length" else _in_chunks(body)

    response = await client.post(
        "/generations", content=content, headers={"Content-Type": "application/json"}
    )

    await rejected(response, 413)


# GET /generations/{jobId}


@pytest.mark.smoke
async def test_get_returns_the_job(client: httpx.AsyncClient, create_job: CreateJob) -> None:
    """GET /generations/{jobId} answers 200 with the job as it was created."""
    created = await create_job(numImages=2, animal="owl")

    response = await client.get(f"/generations/{created['jobId']}")

    assert response.status_code == 200
    assert media_type(response) == "application/json"
    assert_job(response.json())
    assert response.json() == created


@pytest.mark.parametrize("job_id", [str(uuid4()), "nope", "123"], ids=["unknown", "word", "number"])
async def test_get_answers_404_for_an_unknown_or_malformed_id(
    client: httpx.AsyncClient, rejected: Rejected, job_id: str
) -> None:
    """GET /generations/{jobId} answers 404 problem+json for an unknown or malformed id."""
    response = await client.get(f"/generations/{job_id}")

    await rejected(response, 404)


# GET /generations


async def test_list_returns_jobs_newest_first(client: httpx.AsyncClient, create_job: CreateJob) -> None:
    """GET /generations answers 200 with a JSON array of job objects, newest first."""
    created = [await create_job() for _ in range(3)]

    response = await client.get("/generations")

    assert response.status_code == 200
    assert media_type(response) == "application/json"
    listed = response.json()
    for job in listed:
        assert_job(job)
    assert listed == created[::-1]
    assert next_link(response) is None


async def test_list_returns_at_most_50_by_default(client: httpx.AsyncClient, insert_jobs: InsertJobs) -> None:
    """Without ?limit a page holds 50 jobs, and a next page is announced when there are more."""
    await insert_jobs(51)

    response = await client.get("/generations")

    assert response.status_code == 200
    assert len(response.json()) == 50
    assert next_link(response) is not None


async def test_list_pages_cover_every_job_once_in_order(create_job: CreateJob, paginate: Paginate) -> None:
    """Following `Link: rel="next"` from ?limit=2 visits every job once, newest first, and the
    last page announces no next."""
    created = [(await create_job())["jobId"] for _ in range(5)]

    pages = await paginate("/generations?limit=2")

    assert [len(page) for page in pages] == [2, 2, 1]
    assert [job["jobId"] for page in pages for job in page] == created[::-1]


async def test_list_pages_do_not_skip_jobs_created_at_the_same_instant(
    insert_jobs: InsertJobs,
    paginate: Paginate,
) -> None:
    """Pagination neither skips nor repeats jobs that share one created_at."""
    created = await insert_jobs(5)

    pages = await paginate("/generations?limit=2")

    seen = [job["jobId"] for page in pages for job in page]
    assert len(seen) == len(set(seen)) == 5
    assert set(seen) == set(created)


async def test_list_link_is_an_absolute_url_of_this_service(
    client: httpx.AsyncClient, create_job: CreateJob
) -> None:
    """The next-page link is an absolute URL under PUBLIC_BASE_URL that keeps the query."""
    for _ in range(2):
        await create_job()

    response = await client.get("/generations?limit=1&status=pending")

    link = next_link(response)
    assert link is not None
    url = httpx.URL(link)
    assert str(url).startswith(f"{BASE_URL}/generations?")
    assert url.params["limit"] == "1" and url.params["status"] == "pending"
    assert url.params["cursor"]


async def test_list_filters_by_status(
    create_job: CreateJob,
    set_status: SetStatus,
    paginate: Paginate,
) -> None:
    """?status= lists only jobs in that status, across pages too."""
    ids = [(await create_job())["jobId"] for _ in range(5)]
    done = ids[1::2]
    await set_status(done, "completed")

    pending = await paginate("/generations?status=pending&limit=1")
    completed = await paginate("/generations?status=completed")

    assert [job["jobId"] for page in pending for job in page] == [ids[4], ids[2], ids[0]]
    assert [job["jobId"] for page in completed for job in page] == done[::-1]
    assert {job["status"] for page in completed for job in page} == {"completed"}


@pytest.mark.parametrize("limit", ["0", "501", "abc", "-1", "2.5"])
async def test_list_rejects_a_bad_limit_naming_it(
    client: httpx.AsyncClient, rejected: Rejected, limit: str
) -> None:
    """?limit= outside 1..500 or not an integer is a 422 naming limit."""
    response = await client.get("/generations", params={"limit": limit})

    problem = await rejected(response, 422)
    assert names(problem, "limit"), problem


@pytest.mark.parametrize("status", ["done", "PENDING", ""])
async def test_list_rejects_an_unknown_status_naming_it(
    client: httpx.AsyncClient, rejected: Rejected, status: str
) -> None:
    """?status= that is not a job status is a 422 naming status."""
    response = await client.get("/generations", params={"status": status})

    problem = await rejected(response, 422)
    assert names(problem, "status"), problem


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "!!!",
        cursor_of({"a": 1}),
        cursor_of(["2026-01-01T00:00:00", str(uuid4())]),
        cursor_of(["2026-01-01T00:00:00+00:00", "nope"]),
        cursor_of(["0001-01-01T00:00:00+14:00", str(uuid4())]),
        cursor_of(["9999-12-31T23:59:59-14:00", str(uuid4())]),
    ],
    ids=["word", "punctuation", "object", "naive", "bad-id", "before-year-1", "after-year-9999"],
)
async def test_list_rejects_a_cursor_it_did_not_issue_naming_it(
    client: httpx.AsyncClient, rejected: Rejected, cursor: str
) -> None:
    """?cursor= that this service did not issue is a 422 naming cursor."""
    response = await client.get("/generations", params={"cursor": cursor})

    problem = await rejected(response, 422)
    assert names(problem, "cursor"), problem


# GET /images/{jobId}/{n}.png


async def test_image_is_served_as_immutable_png_with_a_strong_etag(
    client: httpx.AsyncClient,
    create_job: CreateJob,
    store_image: StoreImage,
) -> None:
    """A stored image is served 200 image/png, byte for byte, with ETag "<sha256>" and an
    immutable Cache-Control."""
    job = await create_job()
    png, digest = await store_image(job["jobId"], 0)

    response = await client.get(f"/images/{job['jobId']}/0.png")

    assert response.status_code == 200
    assert media_type(response) == "image/png"
    assert response.content == png
    assert response.headers["etag"] == f'"{digest}"'
    assert "immutable" in response.headers["cache-control"]


async def test_image_revalidation_with_its_etag_answers_304_without_a_body(
    client: httpx.AsyncClient,
    create_job: CreateJob,
    store_image: StoreImage,
) -> None:
    """If-None-Match with the image's ETag is answered 304 with no body."""
    job = await create_job()
    _, digest = await store_image(job["jobId"], 0)

    response = await client.get(f"/images/{job['jobId']}/0.png", headers={"If-None-Match": f'"{digest}"'})

    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == f'"{digest}"'


async def test_job_lists_the_absolute_url_of_each_stored_image(
    client: httpx.AsyncClient,
    create_job: CreateJob,
    store_image: StoreImage,
) -> None:
    """imageUrls lists each stored image as an absolute URL this service serves, in both the
    job and the list."""
    job_id = (await create_job(numImages=2))["jobId"]
    await store_image(job_id, 0)
    expected = [f"{BASE_URL}/images/{job_id}/0.png"]

    job = (await client.get(f"/generations/{job_id}")).json()
    listed = (await client.get("/generations")).json()

    assert job["imageUrls"] == expected
    assert listed[0]["imageUrls"] == expected
    assert (await client.get(expected[0])).status_code == 200


@pytest.mark.parametrize(
    "name",
    ["1.png", "x.png", "0.jpg", "0", "-1.png"],
    ids=["missing-index", "word", "jpg", "bare", "negative"],
)
async def test_image_answers_404_for_a_name_it_does_not_serve(
    client: httpx.AsyncClient,
    rejected: Rejected,
    create_job: CreateJob,
    store_image: StoreImage,
    name: str,
) -> None:
    """An image index that is not stored, or a name other than {n}.png, is a 404 problem."""
    job_id = (await create_job())["jobId"]
    await store_image(job_id, 0)

    response = await client.get(f"/images/{job_id}/{name}")

    await rejected(response, 404, jobs=1)


@pytest.mark.parametrize("job_id", [str(uuid4()), "nope"], ids=["unknown", "malformed"])
async def test_image_answers_404_for_an_unknown_job(
    client: httpx.AsyncClient, rejected: Rejected, job_id: str
) -> None:
    """An image of an unknown or malformed job id is a 404 problem."""
    response = await client.get(f"/images/{job_id}/0.png")

    await rejected(response, 404)


# GET /animals


async def test_animals_is_a_sorted_non_empty_list_of_names(client: httpx.AsyncClient) -> None:
    """GET /animals answers 200 with a non-empty, sorted JSON array of strings."""
    response = await client.get("/animals")

    assert response.status_code == 200
    assert media_type(response) == "application/json"
    animals = response.json()
    assert animals and all(isinstance(animal, str) for animal in animals)
    assert animals == sorted(animals)


# Health


async def test_healthz_answers_200(client: httpx.AsyncClient) -> None:
    """GET /healthz answers 200 while the process is up."""
    response = await client.get("/healthz")

    assert response.status_code == 200


async def test_readyz_answers_200_on_a_migrated_database(client: httpx.AsyncClient) -> None:
    """GET /readyz answers 200 when the database answers and its schema is migrated."""
    response = await client.get("/readyz")

    assert response.status_code == 200


async def test_readyz_answers_503_on_a_database_without_the_schema(empty_database_url: str) -> None:
    """GET /readyz answers 503 problem+json when the database has no schema."""
    async with api_client(Settings(_env_file=None, database_url=empty_database_url)) as http:
        response = await http.get("/readyz")

    assert response.status_code == 503
    assert media_type(response) == "application/problem+json"
    assert PROBLEM_FIELDS <= response.json().keys()
    assert response.json()["status"] == 503


# Routing


async def test_unknown_path_answers_404_problem(client: httpx.AsyncClient, rejected: Rejected) -> None:
    """A path the service does not have is a 404 problem+json."""
    response = await client.get("/no/such/thing")

    await rejected(response, 404)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("DELETE", "/generations", {"GET", "POST"}), ("PUT", "/animals", {"GET"})],
)
async def test_wrong_method_answers_405_problem_with_allow(
    client: httpx.AsyncClient,
    rejected: Rejected,
    method: str,
    path: str,
    allowed: set[str],
) -> None:
    """A method the path does not support is a 405 problem+json whose Allow lists every
    method it does support."""
    response = await client.request(method, path)

    await rejected(response, 405)
    assert allowed <= {part.strip() for part in response.headers["allow"].split(",")}


# The job JSON written by hand


def a_job(status: Status, **fields: Any) -> Generation:
    moment = datetime.fromisoformat("2026-11-27T10:30:00.125002+00:00")
    return Generation(
        id=uuid4(),
        status=status,
        num_images=3,
        animal="cat",
        error=fields.pop("error", None),
        attempts=fields.pop("attempts", 0),
        created_at=moment,
        updated_at=moment,
        started_at=fields.pop("started_at", None),
        finished_at=fields.pop("finished_at", None),
        image_indexes=fields.pop("image_indexes", []),
        image_types=fields.pop("image_types", []),
        **fields,
    )


@pytest.mark.parametrize(
    "job",
    [
        a_job(Status.PENDING),
        a_job(
            Status.PROCESSING,
            attempts=1,
            started_at=datetime.now().astimezone(),
            image_indexes=[0, 2],
            image_types=["image/png", "image/jpeg"],
            prompt="a cute cat",
            provider="openai",
            model="gpt-image-1",
        ),
        a_job(
            Status.FAILED,
            attempts=3,
            error="image 1: the model refused: «no» ✗",
            started_at=datetime.now().astimezone(),
            finished_at=datetime.fromisoformat("2026-11-27T10:31:00+01:00"),
        ),
    ],
    ids=["pending", "processing-with-images", "failed-with-unicode-error"],
)
def test_job_json_is_the_documented_job_object(job: Generation) -> None:
    """The job JSON written without pydantic (the hot path) has exactly JobOut's fields and
    validates against JobOut's schema, timestamps as isoformat() writes them (their offset,
    whole seconds without a fraction) and the error's characters intact; a list is an array of the same objects."""
    written = json.loads(job_json(job, base_url="http://h"))
    schema = JobOut.model_json_schema(mode="serialization", by_alias=True)
    jsonschema.validate(written, schema, format_checker=jsonschema.FormatChecker())
    assert written.keys() == schema["properties"].keys()
    assert written["createdAt"] == "2026-11-27T10:30:00.125002+00:00"
    for field, moment in (("startedAt", job.started_at), ("finishedAt", job.finished_at)):
        assert written[field] == (None if moment is None else moment.isoformat())  # whole seconds too
    assert written["error"] == job.error
    extensions = {"image/png": "png", "image/jpeg": "jpg"}
    assert written["imageUrls"] == [
        f"http://h/images/{job.id}/{index}.{extensions[kind]}"
        for index, kind in zip(job.image_indexes, job.image_types, strict=True)
    ]
    assert (written["prompt"], written["provider"], written["model"]) == (job.prompt, job.provider, job.model)
    assert json.loads(jobs_json([job, job], base_url="http://h")) == [written, written]
