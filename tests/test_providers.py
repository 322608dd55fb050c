"""HTTP image providers (IMAGE_PROVIDER=openai|openrouter) against a fake model server over real
HTTP: what is sent, what comes back, and how every failure is classified. Jobs are created
through the API and run by a worker built as the worker process builds it (app/registry.py)."""

from __future__ import annotations

import base64
import contextlib
import logging
import subprocess
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest

from app import registry
from app.images.metrics import ProviderMetrics
from app.images.providers.http import parse_retry_after
from app.settings import Settings
from tests.fake_models import KEY, FakeModels, Huge, Picture, Reply, picture
from tests.support import api_client, free_port, wait_for, wait_until_terminal


@pytest.fixture
async def fake() -> AsyncIterator[FakeModels]:
    models = FakeModels()
    await models.start()
    yield models
    await models.stop()


def configured(database_url: str, fake: FakeModels, provider: str = "openai", **overrides: Any) -> Settings:
    """Settings for `provider` pointed at the fake, with quick retries."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "public_base_url": "http://menagerie.test",
        "auth": "none",
        "image_provider": provider,
        "image_model": "gpt-image-1" if provider == "openai" else "google/gemini-2.5-flash-image",
        "openai_api_key": KEY,
        "openai_base_url": fake.base_url,
        "openrouter_api_key": KEY,
        "openrouter_base_url": fake.base_url,
        "retry_base_delay": 0.05,
        "retry_max_delay": 5,
        "image_provider_timeout": 5,
    }
    return Settings(_env_file=None, **{**values, **overrides})


@contextlib.asynccontextmanager
async def service(
    settings: Settings, pool: asyncpg.Pool, start_worker: Any, worker_settings: Settings | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, ProviderMetrics]]:
    """The API with `settings`, and a worker with `worker_settings` (the same by default), its
    provider and one HTTP client built as `menagerie worker` builds them."""
    worker_settings = worker_settings or settings
    metrics = ProviderMetrics()
    async with registry.http_client(worker_settings) as client:
        provider = registry.provider(worker_settings, client)
        await start_worker(*registry.kinds(worker_settings, pool, image_provider=provider, metrics=metrics))
        async with api_client(settings) as http:
            yield http, metrics


async def run_job(http: httpx.AsyncClient, **body: Any) -> dict:
    """Create a generation and wait until it is finished."""
    created = await http.post("/generations", json={"numImages": 1, **body})
    assert created.status_code == 202, created.text
    return await wait_until_terminal(http, created.headers["location"], timeout=30)


def sample(metrics: ProviderMetrics, name: str, **labels: str) -> float:
    for collector in metrics.collectors:
        for family in collector.collect():
            for found in family.samples:
                if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                    return found.value
    return 0.0


async def downloads(http: httpx.AsyncClient, job: dict) -> list[httpx.Response]:
    return [await http.get(url.removeprefix("http://menagerie.test")) for url in job["imageUrls"]]


# Whole jobs through each provider


@pytest.mark.smoke
async def test_a_job_of_three_images_through_openai_stores_exactly_what_the_model_sent(
    database_url, pool, start_worker, fake
):
    """Three images through `openai`: one call each with the bearer key, the model, `n: 1`,
    the size and a prompt naming the job's animal (no response_format for a GPT image model);
    the served bytes are exactly the fake's, and each image records where it came from."""
    settings = configured(database_url, fake)
    async with service(settings, pool, start_worker) as (http, metrics):
        job = await run_job(http, numImages=3, animal="owl")
        served = await downloads(http, job)
    assert job["status"] == "completed", job
    assert (job["prompt"], job["provider"], job["model"]) == ("a cute owl", "openai", "gpt-image-1")
    assert sorted(response.content for response in served) == sorted(fake.served)
    assert {response.headers["content-type"] for response in served} == {"image/png"}
    calls = fake.api_requests()
    assert len(calls) == 3
    for call in calls:
        assert call.headers["authorization"] == f"Bearer {KEY}"
        assert call.body == {"model": "gpt-image-1", "prompt": "a cute owl", "n": 1, "size": "1024x1024"}
    rows = await pool.fetch(
        "SELECT provider, model, provider_request_id, size, octet_length(png) AS bytes, latency_ms, content_type "
        "FROM images WHERE job_id = $1",
        UUID(job["jobId"]),
    )
    assert {(row["provider"], row["model"], row["content_type"]) for row in rows} == {
        ("openai", "gpt-image-1", "image/png")
    }
    assert all(row["provider_request_id"].startswith("req_") for row in rows)
    assert all(row["bytes"] == row["size"] and row["latency_ms"] is not None for row in rows)
    assert sample(metrics, "menagerie_provider_calls_total", provider="openai", outcome="ok") == 3


async def test_a_job_of_three_images_through_openrouter_stores_exactly_what_the_model_sent(
    database_url, pool, start_worker, fake
):
    """Three images through `openrouter`: chat completions with the bearer key, the model, the
    prompt as the user's message and the output modalities; the first data URL of each
    answer is stored and served as it came, with the completion's id."""
    settings = configured(database_url, fake, "openrouter", image_prompt_template="a watercolour {animal}")
    async with service(settings, pool, start_worker) as (http, _):
        job = await run_job(http, numImages=3, animal="fox")
        served = await downloads(http, job)
    assert job["status"] == "completed", job
    assert (job["prompt"], job["provider"]) == ("a watercolour fox", "openrouter")
    assert sorted(response.content for response in served) == sorted(fake.served)
    calls = fake.api_requests()
    assert [call.path for call in calls] == ["/v1/chat/completions"] * 3
    for call in calls:
        assert call.headers["authorization"] == f"Bearer {KEY}"
        assert call.body == {
            "model": "google/gemini-2.5-flash-image",
            "messages": [{"role": "user", "content": "a watercolour fox"}],
            "modalities": ["image", "text"],
        }
    ids = await pool.fetch("SELECT provider_request_id FROM images WHERE job_id = $1", UUID(job["jobId"]))
    assert all(row["provider_request_id"].startswith("gen-") for row in ids)


async def test_dall_e_models_are_asked_for_base64(database_url, pool, start_worker, fake):
    """Only the dall-e models take `response_format`: they are sent `b64_json`."""
    settings = configured(database_url, fake, image_model="dall-e-3")
    async with service(settings, pool, start_worker) as (http, _):
        job = await run_job(http)
    assert job["status"] == "completed"
    [call] = fake.api_requests()
    assert call.body["response_format"] == "b64_json"


async def test_jpeg_and_webp_are_stored_as_sent_and_served_with_their_type(
    database_url, pool, start_worker, fake
):
    """An image comes back as the provider made it: a JPEG is served as image/jpeg at a .jpg
    URL, a WebP as image/webp at .webp; the same index with another extension is a 404."""
    settings = configured(database_url, fake)
    jpeg, webp = picture(7, "JPEG"), picture(8, "WEBP")
    async with service(settings, pool, start_worker) as (http, _):
        fake.script(Picture(jpeg))
        first = await run_job(http)
        fake.script(Picture(webp))
        second = await run_job(http)
        [as_jpeg] = await downloads(http, first)
        [as_webp] = await downloads(http, second)
        wrong = await http.get(
            first["imageUrls"][0].removeprefix("http://menagerie.test").replace(".jpg", ".png")
        )
    assert first["imageUrls"][0].endswith("/0.jpg") and second["imageUrls"][0].endswith("/0.webp")
    assert (as_jpeg.headers["content-type"], as_jpeg.content) == ("image/jpeg", jpeg)
    assert (as_webp.headers["content-type"], as_webp.content) == ("image/webp", webp)
    assert wrong.status_code == 404


# Transient failures: retried


async def test_a_429_with_retry_after_is_retried_no_sooner_than_it_says(
    database_url, pool, start_worker, fake
):
    """A 429 with `Retry-After: 2` is transient: the retry waits at least 2 s (the backoff is
    far shorter), then the job completes; the wait is counted."""
    settings = configured(database_url, fake)
    fake.script(
        Reply(
            429,
            {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
            headers={"Retry-After": "2"},
        )
    )
    async with service(settings, pool, start_worker) as (http, metrics):
        job = await run_job(http)
    assert (job["status"], job["attempts"]) == ("completed", 2), job
    first, second = fake.api_requests()
    assert second.at - first.at >= 2.0
    assert sample(metrics, "menagerie_provider_retry_after_total", provider="openai") == 1
    assert sample(metrics, "menagerie_provider_calls_total", outcome="transient") == 1


async def test_a_retry_after_longer_than_retry_max_delay_is_capped(database_url, pool, start_worker, fake):
    """A provider asking for an hour waits RETRY_MAX_DELAY at most: the job is due again
    within it and completes."""
    settings = configured(database_url, fake, retry_max_delay=1)
    fake.script(Reply(503, {"error": {"message": "overloaded"}}, headers={"Retry-After": "3600"}))
    async with service(settings, pool, start_worker) as (http, _):
        created = await http.post("/generations", json={"numImages": 1})
        job_id = UUID(created.json()["jobId"])

        async def retrying() -> bool:
            return bool(await pool.fetchval("SELECT error IS NOT NULL FROM jobs WHERE id = $1", job_id))

        await wait_for(retrying)
        wait = await pool.fetchval(
            "SELECT extract(epoch FROM run_at - updated_at) FROM jobs WHERE id = $1", job_id
        )
        job = await wait_until_terminal(http, created.headers["location"])
    assert wait is None or float(wait) <= 1.0 + 0.01
    assert (job["status"], job["attempts"]) == ("completed", 2), job


def test_retry_after_is_read_as_seconds_or_as_an_http_date():
    """Retry-After is seconds or an HTTP date (from now); anything else is ignored."""
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


async def test_server_errors_are_retried_until_the_model_answers(database_url, pool, start_worker, fake):
    """Two 500s, then success: the job completes on its third attempt."""
    settings = configured(database_url, fake)
    fake.script(
        Reply(500, {"error": {"message": "The server had an error"}}), Reply(503, text="upstream busy")
    )
    async with service(settings, pool, start_worker) as (http, metrics):
        job = await run_job(http)
    assert (job["status"], job["attempts"], job["error"]) == ("completed", 3, None)
    assert sample(metrics, "menagerie_provider_calls_total", outcome="transient") == 2


async def test_a_read_timeout_is_retried(database_url, pool, start_worker, fake):
    """A model that does not answer within IMAGE_PROVIDER_TIMEOUT is a transient failure:
    retried, and the job completes once it answers."""
    settings = configured(database_url, fake, image_provider_timeout=0.5)
    fake.script(Reply(200, {"data": []}, delay=3))
    async with service(settings, pool, start_worker) as (http, _):
        job = await run_job(http)
    assert (job["status"], job["attempts"]) == ("completed", 2), job


async def test_a_refused_connection_is_retried_until_the_model_is_back(
    database_url, pool, start_worker, fake
):
    """With the model server down, calls are refused: the job is retried (its error says the
    provider could not be reached) and completes once the server answers again."""
    settings = configured(database_url, fake, retry_base_delay=0.2, retry_max_delay=0.4, job_max_attempts=20)
    await fake.stop()
    async with service(settings, pool, start_worker) as (http, _):
        created = await http.post("/generations", json={"numImages": 1})
        job_id = UUID(created.json()["jobId"])

        async def retried() -> bool:
            row = await pool.fetchrow("SELECT attempts, error FROM jobs WHERE id = $1", job_id)
            return row["attempts"] >= 2 and "could not be reached" in (row["error"] or "")

        await wait_for(retried)
        await fake.start()
        job = await wait_until_terminal(http, created.headers["location"])
    assert job["status"] == "completed" and job["attempts"] >= 2, job


async def test_an_openrouter_error_object_in_a_200_is_classified_by_its_code(
    database_url, pool, start_worker, fake
):
    """OpenRouter's 200 carrying `error` is read like an HTTP error of its code: a 502 is
    retried, a 402 (no credits) fails the job at once with OpenRouter's message."""
    settings = configured(database_url, fake, "openrouter")
    fake.script(
        Reply(200, {"error": {"code": 502, "message": "Provider returned error"}}),
        Reply(200, {"error": {"code": 402, "message": "Insufficient credits"}}),
    )
    async with service(settings, pool, start_worker) as (http, _):
        job = await run_job(http)
    assert (job["status"], job["attempts"]) == ("failed", 2), job
    assert "402" in job["error"] and "Insufficient credits" in job["error"]


# Permanent failures: failed at once


async def test_a_content_policy_refusal_fails_the_job_at_once(database_url, pool, start_worker, fake):
    """A 400 content-policy refusal is permanent: one attempt, and the error reads as a
    refusal, with the provider's own message."""
    settings = configured(database_url, fake)
    message = "Your request was rejected as a result of our safety system."
    fake.script(
        Reply(
            400,
            {
                "error": {
                    "message": message,
                    "type": "image_generation_user_error",
                    "code": "content_policy_violation",
                }
            },
        )
    )
    async with service(settings, pool, start_worker) as (http, metrics):
        job = await run_job(http)
    assert (job["status"], job["attempts"]) == ("failed", 1), job
    assert "refused by the content policy" in job["error"] and message in job["error"]
    assert len(fake.api_requests()) == 1
    assert sample(metrics, "menagerie_provider_calls_total", outcome="permanent") == 1


async def test_a_bad_key_fails_at_once_and_the_key_shows_nowhere(
    database_url, pool, start_worker, fake, caplog
):
    """A 401 is permanent: one attempt, the provider's message in `error`, with the key (which
    the provider echoes) blanked out; the key is in no log line and no job JSON."""
    caplog.set_level(logging.DEBUG)
    settings = configured(database_url, fake)
    fake.script(
        Reply(
            401,
            {
                "error": {
                    "message": f"Incorrect API key provided: {KEY}.",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            },
        )
    )
    async with service(settings, pool, start_worker) as (http, _):
        job = await run_job(http)
        listed = (await http.get("/generations")).text
    assert (job["status"], job["attempts"]) == ("failed", 1), job
    assert "401" in job["error"] and "Incorrect API key provided" in job["error"]
    assert KEY not in job["error"] and KEY not in listed and KEY not in caplog.text
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())


async def test_an_exhausted_quota_429_fails_at_once(database_url, pool, start_worker, fake):
    """A 429 that says the quota is exhausted (`insufficient_quota`) is not a rate limit:
    waiting will not help, so the job fails at once."""
    settings = configured(database_url, fake)
    fake.script(
        Reply(
            429,
            {
                "error": {
                    "message": "You exceeded your current quota.",
                    "type": "insufficient_quota",
                    "code": "insufficient_quota",
                }
            },
            headers={"Retry-After": "1"},
        )
    )
    async with service(settings, pool, start_worker) as (http, _):
        job = await run_job(http)
    assert (job["status"], job["attempts"]) == ("failed", 1), job
    assert "exceeded your current quota" in job["error"]


# Answers that are not images


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        ({"created": 1, "data": []}, "no image"),
        ({"created": 1, "data": [{"b64_json": "not base64 at all!"}]}, "not valid base64"),
        (
            {"created": 1, "data": [{"b64_json": base64.b64encode(b"just some text\n" * 20).decode()}]},
            "not an image",
        ),
    ],
    ids=["no-image", "bad-base64", "text-file"],
)
async def test_an_answer_without_a_usable_image_is_retried_then_fails(
    database_url, pool, start_worker, fake, answer, named
):
    """A 200 with no image, bad base64 or bytes that are not an image is transient: retried
    up to JOB_MAX_ATTEMPTS, then the job fails with an error naming what was wrong."""
    settings = configured(database_url, fake, job_max_attempts=3)
    fake.script(*[Reply(200, answer)] * 3)
    async with service(settings, pool, start_worker) as (http, _):
        job = await run_job(http)
    assert (job["status"], job["attempts"]) == ("failed", 3), job
    assert job["error"].startswith("image 0: openai") and named in job["error"]
    assert len(fake.api_requests()) == 3


async def test_a_url_answer_is_downloaded_without_the_key(database_url, pool, start_worker, fake):
    """An OpenAI answer with a `url` is downloaded with the same client, and the key is not
    sent to wherever the link points."""
    settings = configured(database_url, fake)
    image = picture(42)
    fake.script(Picture(image, as_url=True))
    async with service(settings, pool, start_worker) as (http, _):
        job = await run_job(http)
        [served] = await downloads(http, job)
    assert job["status"] == "completed" and served.content == image
    [download] = [seen for seen in fake.requests if seen.path.startswith("/files/")]
    assert "authorization" not in download.headers


async def test_a_url_answer_over_max_image_bytes_is_cut_off_and_fails(database_url, pool, start_worker, fake):
    """A linked image larger than MAX_IMAGE_BYTES is read no further than the limit and fails
    the job at once (the same model would send it again), saying so."""
    settings = configured(database_url, fake, max_image_bytes=100_000)
    fake.script(Huge(50_000_000))
    async with service(settings, pool, start_worker) as (http, _):
        job = await run_job(http)
    assert (job["status"], job["attempts"]) == ("failed", 1), job
    assert "over MAX_IMAGE_BYTES (100000 bytes)" in job["error"]


# Limits and what a job keeps


async def test_calls_in_flight_are_bounded_per_worker_process_and_a_jobs_images_run_together(
    database_url, pool, start_worker, fake
):
    """With PROVIDER_MAX_CONCURRENCY=2 and two jobs of three images on four slots, exactly two
    calls are ever in flight: a job's images are requested together, and the bound holds
    across jobs."""
    settings = configured(database_url, fake, provider_max_concurrency=2)
    fake.script(*[Picture(picture(number), delay=0.3) for number in range(6)])
    async with service(settings, pool, start_worker) as (http, _):
        created = [await http.post("/generations", json={"numImages": 3}) for _ in range(2)]
        jobs = [await wait_until_terminal(http, response.headers["location"]) for response in created]
    assert [job["status"] for job in jobs] == ["completed", "completed"]
    assert fake.most_in_flight == 2


async def test_a_job_keeps_the_provider_and_model_it_was_created_with(database_url, pool, start_worker, fake):
    """A job created for `openai` with model-a is never claimed by a local worker, and an
    openai worker configured with model-b still asks for model-a."""
    created_with = configured(database_url, fake, image_model="model-a")
    async with api_client(created_with) as http:
        openai_job = (await http.post("/generations", json={"numImages": 1})).json()
    local = Settings(
        _env_file=None,
        auth="none",
        database_url=database_url,
        public_base_url="http://menagerie.test",
        image_provider_delay=0,
        image_size=64,
    )
    async with service(local, pool, start_worker) as (http, _):
        local_job = await run_job(http)
        untouched = (await http.get(f"/generations/{openai_job['jobId']}")).json()
    assert local_job["status"] == "completed" and local_job["provider"] == "local"
    assert (untouched["status"], untouched["attempts"]) == ("pending", 0)
    worker = configured(database_url, fake, image_model="model-b")
    async with service(created_with, pool, start_worker, worker) as (http, _):
        done = await wait_until_terminal(http, f"/generations/{openai_job['jobId']}")
    assert (done["status"], done["model"]) == ("completed", "model-a")
    [call] = fake.api_requests()
    assert call.body["model"] == "model-a"


# Settings


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"IMAGE_PROVIDER": "midjourney"}, "IMAGE_PROVIDER"),
        ({"IMAGE_PROVIDER": "openai"}, "IMAGE_MODEL"),
        ({"IMAGE_PROVIDER": "openai", "IMAGE_MODEL": "gpt-image-1"}, "OPENAI_API_KEY"),
        ({"IMAGE_PROVIDER": "openrouter", "IMAGE_MODEL": "x/y"}, "OPENROUTER_API_KEY"),
        ({"IMAGE_PROMPT_TEMPLATE": "a cute cat"}, "IMAGE_PROMPT_TEMPLATE"),
        ({"IMAGE_PROMPT_TEMPLATE": "a {colour} {animal}"}, "IMAGE_PROMPT_TEMPLATE"),
    ],
    ids=[
        "unknown-provider",
        "no-model",
        "no-openai-key",
        "no-openrouter-key",
        "no-placeholder",
        "other-placeholder",
    ],
)
def test_a_worker_with_a_bad_provider_setting_stops_with_one_line(spawn, env, variable):
    """An unknown provider, a missing model or key, or a template without {animal} or with
    another placeholder stops the worker at start: exit 2, one line naming the variable."""
    process = spawn("worker.py", env=env, stderr=subprocess.PIPE)
    _, stderr = process.communicate(timeout=30)
    lines = stderr.decode().strip().splitlines()
    assert process.returncode == 2
    assert len(lines) == 1 and variable in lines[0], lines


async def test_a_worker_process_runs_its_providers_jobs_and_serves_its_metrics(database_url, fake, spawn):
    """`menagerie worker` with IMAGE_PROVIDER=openai runs the job through the model server,
    and serves its provider calls by provider, model and outcome, their latency and the
    Retry-After waits on WORKER_METRICS_PORT."""
    port = free_port()
    spawn(
        "worker.py",
        env={
            "DATABASE_URL": database_url,
            "IMAGE_PROVIDER": "openai",
            "IMAGE_MODEL": "gpt-image-1",
            "OPENAI_API_KEY": KEY,
            "OPENAI_BASE_URL": fake.base_url,
            "WORKER_METRICS_PORT": str(port),
            "RETRY_BASE_DELAY": "0.05",
        },
    )
    fake.script(Reply(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "0.1"}))
    async with api_client(configured(database_url, fake)) as http:
        job = await run_job(http)
    assert job["status"] == "completed", job
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    labels = 'model="gpt-image-1",outcome="{}",provider="openai"'
    assert f"menagerie_provider_calls_total{{{labels.format('ok')}}} 1.0" in text
    assert f"menagerie_provider_calls_total{{{labels.format('transient')}}} 1.0" in text
    assert 'menagerie_provider_retry_after_total{model="gpt-image-1",provider="openai"} 1.0' in text
    assert 'menagerie_provider_call_seconds_count{model="gpt-image-1",provider="openai"} 2.0' in text
