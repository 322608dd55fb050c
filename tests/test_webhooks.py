"""Webhooks: deliveries are jobs of kind `webhook`, enqueued with the change that causes them,
signed per Standard Webhooks, retried on a schedule, refused for private addresses.

Receivers are real HTTP servers on local ports (uvicorn); every delivery they get is verified
with the `standardwebhooks` package. No test sends a packet anywhere but loopback: in-process
deliveries connect through `LoopbackOnly`, which fails the test instead of opening any other
socket."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email.utils
import ipaddress
import json
import signal
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpcore
import httpx
import pytest
import trustme
import uvicorn
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import keys, registry
from app.images import generate
from app.images.providers import Image
from app.queue import jobs as queue_jobs
from app.queue.kinds import configured
from app.queue.worker import Timing
from app.settings import Settings, webhook_key
from app.webhooks import signing
from app.webhooks.delivery import retry_after
from tests.support import TEST_TIMING, api_client, free_port, wait_for, wait_until_terminal
from tests.test_keys import run_keys

SECRET = "whsec_" + base64.b64encode(b"menagerie-test-webhook-secret-32b").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"a-second-secret-for-the-rotation").decode()


class Receiver:
    """A real HTTP server on a local port that records every POST and answers from `plan`:
    a status code, "503:N" (503 with Retry-After: N), or "hang" (never answers); the last step
    repeats."""

    def __init__(self, plan: Iterable[int | str] = (200,), *, tls: dict[str, str] | None = None) -> None:
        self.plan = list(plan)
        self.deliveries: list[dict[str, Any]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/menagerie"
        self.arrived = asyncio.Event()

        async def hook(request: Request) -> Response:
            body = await request.body()
            self.deliveries.append({"headers": dict(request.headers), "body": body})
            self.arrived.set()
            step = self.plan[min(len(self.deliveries), len(self.plan)) - 1]
            if step == "hang":
                await asyncio.sleep(3600)
            status, _, wait = str(step).partition(":")
            return Response(
                b"thanks", status_code=int(status), headers={"Retry-After": wait} if wait else None
            )

        app = Starlette(routes=[Route("/{path:path}", hook, methods=["POST"])])
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off", **(tls or {})
            )
        )

    def verified(self, secret: str = SECRET) -> list[dict[str, Any]]:
        """Every delivery's body, each checked with standardwebhooks (raises on a bad one)."""
        return [Webhook(secret).verify(d["body"], d["headers"]) for d in self.deliveries]

    def ids(self) -> list[str]:
        return [d["headers"]["webhook-id"] for d in self.deliveries]


@pytest.fixture
async def receiver() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    started: list[tuple[Receiver, asyncio.Task[None]]] = []

    async def start(*plan: int | str, tls: dict[str, str] | None = None) -> Receiver:
        made = Receiver(plan or (200,), tls=tls)
        task = asyncio.create_task(made.server.serve())
        await wait_for(lambda: _true(made.server.started))
        started.append((made, task))
        return made

    yield start
    for made, task in started:
        made.server.should_exit = made.server.force_exit = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _true(value: bool) -> bool:
    return value


class LoopbackOnly(httpcore.AsyncNetworkBackend):
    """The tests' connector: opens sockets to loopback addresses only; anything else is
    recorded and raised, and the `connector` fixture fails the test for it."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.violations: list[str] = []
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, **options: Any) -> httpcore.AsyncNetworkStream:
        if not ipaddress.ip_address(host).is_loopback:
            self.violations.append(f"{host}:{port}")
            raise AssertionError(f"a delivery tried to open a socket to {host}:{port}")
        self.opened.append(f"{host}:{port}")
        return await self._backend.connect_tcp(host, port, **options)

    async def connect_unix_socket(self, path: str, **options: Any) -> httpcore.AsyncNetworkStream:
        self.violations.append(path)
        raise AssertionError(f"a delivery tried to open {path}")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


@pytest.fixture
def connector() -> Iterable[LoopbackOnly]:
    made = LoopbackOnly()
    yield made
    assert made.violations == [], "a delivery tried to reach beyond loopback"


def hook_settings(database_url: str, **changes: Any) -> Settings:
    """Test settings with webhooks on: a secret, quick retries, local receivers allowed."""
    values: dict[str, Any] = {
        "_env_file": None,
        "database_url": database_url,
        "auth": "none",
        "image_provider_delay": 0,
        "image_size": 64,
        "public_base_url": "http://menagerie.test",
        "webhook_secret": SECRET,
        "webhook_allow_private": True,
        "webhook_retry_schedule": "0.1s,0.1s,0.1s",
        "webhook_timeout": 5,
    }
    return Settings(**{**values, **changes})


def worker_env(database_url: str, **changes: str) -> dict[str, str]:
    """The environment of a `worker.py` process with webhooks on, as hook_settings has them."""
    return {
        "DATABASE_URL": database_url,
        "IMAGE_PROVIDER_DELAY": "0",
        "IMAGE_SIZE": "64",
        "PUBLIC_BASE_URL": "http://menagerie.test",
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_ALLOW_PRIVATE": "true",
        "WORKER_POLL_INTERVAL": "3600",
        **changes,
    }


@pytest.fixture
async def worker_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=10)
    yield pool
    await pool.close()


@pytest.fixture
async def start_delivering(start_worker, worker_pool, connector, database_url):
    """Start an in-process worker running generations and webhook deliveries as the `menagerie
    worker` command builds them (app.registry), through the test's connector (and resolver)."""
    built: list[registry.Deliveries] = []

    async def start(settings: Settings, *, resolver=None, timing: Timing = TEST_TIMING, ssl_context=None):
        seams: dict[str, Any] = {} if resolver is None else {"resolver": resolver}
        deliveries = registry.webhook_deliveries(
            settings, worker_pool, connector=connector, ssl_context=ssl_context, **seams
        )
        built.append(deliveries)
        await start_worker(*registry.kinds(settings, worker_pool, deliveries), timing=timing)
        return deliveries

    yield start
    for deliveries in built:
        await deliveries.close()


async def create(http: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await http.post("/generations", json={"numImages": 1, **body})


async def webhook_jobs(pool: asyncpg.Pool, status: str | None = None) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT id, status, attempts, error, args FROM jobs WHERE kind = 'webhook' "
        "AND ($1::text IS NULL OR status = $1) ORDER BY created_at",
        status,
    )


async def all_finished(pool: asyncpg.Pool, count: int) -> None:
    """Wait until `count` deliveries exist and none is waiting or running."""

    async def done() -> bool:
        rows = await webhook_jobs(pool)
        return len(rows) >= count and all(row["status"] in ("completed", "failed") for row in rows)

    await wait_for(done, timeout=20)


async def one_delivery(
    http: httpx.AsyncClient, pool: asyncpg.Pool, **body: Any
) -> tuple[list, asyncpg.Record]:
    """Create a job with `body` (its webhook) and wait until its one delivery is done: the
    attempts GET /generations/{id}/webhooks lists, and the delivery's job."""
    created = await create(http, **body)
    assert created.status_code == 202, created.text
    await all_finished(pool, 1)
    [delivery] = await webhook_jobs(pool)
    return await attempts_of(http, created), delivery


async def attempts_of(http: httpx.AsyncClient, created: httpx.Response) -> list[dict[str, Any]]:
    return (await http.get(f"{created.headers['location']}/webhooks")).json()


def assert_sent_again(hook: Receiver, times: int) -> None:
    """The receiver got the job's `completed` delivery `times` times, with one webhook-id."""
    assert len(hook.deliveries) == times
    assert len(set(hook.ids())) == 1
    assert all(body["event"] == "completed" for body in hook.verified())


@pytest.mark.smoke
async def test_a_job_with_every_event_gives_five_signed_deliveries_in_sequence(
    database_url, pool, receiver, start_delivering, connector
):
    """A job asking for start, image and completed with 3 images gets 5 deliveries, each
    verified by standardwebhooks, numbered 1 to 5 in the order of the changes, each with its
    own webhook-id, each body the job as it was then plus `event` and `sequence`; the last
    one is the job as GET shows it. The attempts endpoint lists the five, delivered."""
    settings = hook_settings(database_url)
    hook = await receiver(200)
    deliveries = await start_delivering(settings)
    async with api_client(settings) as http:
        created = await create(
            http, numImages=3, webhook=hook.url, webhookEvents=["start", "image", "completed"]
        )
        assert created.status_code == 202, created.text
        assert created.json()["webhook"] == hook.url
        assert created.json()["webhookEvents"] == ["start", "image", "completed"]
        job = await wait_until_terminal(http, created.headers["location"])
        await all_finished(pool, 5)
        bodies = sorted(hook.verified(), key=lambda body: body["sequence"])
        assert [(b["sequence"], b["event"]) for b in bodies] == [
            (1, "start"),
            (2, "image"),
            (3, "image"),
            (4, "image"),
            (5, "completed"),
        ]
        assert len(set(hook.ids())) == 5
        assert [b["status"] for b in bodies] == ["processing"] * 4 + ["completed"]
        assert [len(b["imageUrls"]) for b in bodies] == [0, 1, 2, 3, 3]
        assert bodies[1]["imageUrls"] == job["imageUrls"][:1]
        assert all(b["jobId"] == job["jobId"] and b["attempts"] == 1 for b in bodies)
        assert {key: value for key, value in bodies[-1].items() if key not in ("event", "sequence")} == job
        assert {d["headers"]["content-type"] for d in hook.deliveries} == {"application/json"}
        listed = await attempts_of(http, created)
    assert sorted((a["sequence"], a["event"], a["outcome"], a["statusCode"]) for a in listed) == [
        (1, "start", "delivered", 200),
        (2, "image", "delivered", 200),
        (3, "image", "delivered", 200),
        (4, "image", "delivered", 200),
        (5, "completed", "delivered", 200),
    ]
    assert {a["webhookId"] for a in listed} == set(hook.ids())
    assert connector.opened, "deliveries went through the guarded connector"
    assert deliveries.metrics.attempts.labels("delivered")._value.get() == 5


async def test_a_failing_receiver_is_retried_with_the_same_webhook_id(
    database_url, pool, receiver, start_delivering
):
    """A receiver that answers 500 twice then 200 gets the delivery on the third attempt,
    with the same webhook-id (and a fresh timestamp and signature) each time; the endpoint
    lists the three attempts."""
    settings = hook_settings(database_url)
    hook = await receiver(500, 500, 200)
    await start_delivering(settings)
    async with api_client(settings) as http:
        listed, delivery = await one_delivery(http, pool, webhook=hook.url)
    assert_sent_again(hook, 3)
    assert (delivery["status"], delivery["attempts"]) == ("completed", 3)
    assert [(a["attempt"], a["outcome"], a["statusCode"]) for a in listed] == [
        (1, "retrying", 500),
        (2, "retrying", 500),
        (3, "delivered", 200),
    ]
    assert listed[0]["error"] == "the receiver answered 500"
    assert {a["webhookId"] for a in listed} == set(hook.ids())


async def test_410_gone_stops_the_retries(database_url, pool, receiver, start_delivering):
    """A 410 Gone answer ends the delivery for good after one attempt: the delivery job is
    failed (no retry can follow) and the attempt is recorded as gone."""
    settings = hook_settings(database_url)
    hook = await receiver(410, 200)
    await start_delivering(settings)
    async with api_client(settings) as http:
        listed, delivery = await one_delivery(http, pool, webhook=hook.url)
    assert len(hook.deliveries) == 1
    assert (delivery["status"], delivery["attempts"]) == ("failed", 1)
    assert "410" in delivery["error"]
    assert [(a["outcome"], a["statusCode"]) for a in listed] == [("gone", 410)]


async def test_a_receiver_that_hangs_is_cut_at_the_timeout_and_retried(
    database_url, pool, receiver, start_delivering
):
    """A receiver that never answers is cut after WEBHOOK_TIMEOUT, the attempt recorded with
    the timeout as its error, and the delivery is retried (delivered the second time)."""
    settings = hook_settings(database_url, webhook_timeout=0.5)
    hook = await receiver("hang", 200)
    await start_delivering(settings)
    async with api_client(settings) as http:
        listed, _ = await one_delivery(http, pool, webhook=hook.url)
    assert [(a["outcome"], a["statusCode"], a["error"]) for a in listed] == [
        ("retrying", None, "no answer within 0.5 s"),
        ("delivered", 200, None),
    ]
    assert listed[0]["latencyMs"] >= 500
    assert len(set(hook.ids())) == 1


async def test_a_retry_after_of_a_429_or_503_sets_the_next_attempt(
    database_url, pool, receiver, start_delivering
):
    """A 503 with Retry-After: 1 is retried a second later, not after the schedule's hour;
    the attempt's error says so."""
    settings = hook_settings(database_url, webhook_retry_schedule="1h")
    hook = await receiver("503:1", 200)
    await start_delivering(settings)
    async with api_client(settings) as http:
        listed, delivery = await one_delivery(http, pool, webhook=hook.url)
    assert [(a["outcome"], a["statusCode"]) for a in listed] == [("retrying", 503), ("delivered", 200)]
    assert listed[0]["error"] == "the receiver answered 503, Retry-After 1 s"
    assert delivery["status"] == "completed"


def test_retry_after_reads_seconds_and_http_dates():
    """Retry-After as delay-seconds or an HTTP date (a past one is now); anything else is
    ignored (the schedule applies)."""
    later = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    assert retry_after("30") == 30
    assert 100 < retry_after(later) <= 120
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0
    assert retry_after("soon") is None and retry_after(None) is None


async def test_attempts_run_out_on_the_schedule_then_the_delivery_fails(
    database_url, pool, receiver, start_delivering
):
    """WEBHOOK_RETRY_SCHEDULE's delays plus one is the number of attempts: with two delays,
    a receiver that always answers 503 gets three, and the last is recorded as failed."""
    settings = hook_settings(database_url, webhook_retry_schedule="50ms,100ms")
    hook = await receiver(503)
    await start_delivering(settings)
    async with api_client(settings) as http:
        listed, delivery = await one_delivery(http, pool, webhook=hook.url)
    assert len(hook.deliveries) == 3
    assert [a["outcome"] for a in listed] == ["retrying", "retrying", "failed"]
    assert delivery["status"] == "failed" and delivery["error"] == "the receiver answered 503"


async def test_a_rolled_back_change_sends_nothing_and_a_committed_one_is_delivered(
    database_url, pool, receiver, start_delivering
):
    """The delivery is enqueued inside the transaction of the change: a cancel rolled back
    leaves no delivery (and the receiver hears nothing), the same cancel committed is
    delivered once, with the job canceled."""
    settings = hook_settings(database_url)
    hook = await receiver(200)
    async with api_client(settings) as http:
        created = await create(http, webhook=hook.url)
        job_id = UUID(created.json()["jobId"])
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute("SELECT job_cancel($1)", job_id)
            inside = await conn.fetchval("SELECT count(*) FROM job_queue WHERE kind = 'webhook'")
            await transaction.rollback()
        assert inside == 1, "the delivery is written in the change's own transaction"
        assert await webhook_jobs(pool) == []
        await start_delivering(settings)
        job = await wait_until_terminal(http, created.headers["location"])
        assert job["status"] == "completed"
        await all_finished(pool, 1)
        [body] = hook.verified()
        assert (body["event"], body["status"]) == ("completed", "completed")
    assert len(await webhook_jobs(pool)) == 1


async def test_a_canceled_job_is_reported_as_completed_event_with_its_status(
    database_url, pool, receiver, start_delivering
):
    """Canceling a waiting job fires `completed` with status canceled (any end does)."""
    settings = hook_settings(database_url)
    hook = await receiver(200)
    async with api_client(settings) as http:
        created = await create(http, webhook=hook.url, webhookEvents=["start", "completed"])
        await http.post(f"{created.headers['location']}/cancel")
        await start_delivering(settings)
        await all_finished(pool, 1)
    [body] = hook.verified()
    assert (body["event"], body["sequence"], body["status"]) == ("completed", 1, "canceled")


async def test_start_fires_once_even_when_the_job_is_handed_back_and_claimed_again(
    database_url, pool, receiver, start_delivering
):
    """`start` fires at the first claim only: a job handed back (its attempt uncounted) and
    claimed again sends no second start."""
    settings = hook_settings(database_url)
    hook = await receiver(200)
    async with api_client(settings) as http:
        created = await create(http, webhook=hook.url, webhookEvents=["start"])
        job_id = UUID(created.json()["jobId"])
        for _ in range(2):
            [job] = await queue_jobs.claim(pool, worker_id="w-test", wanted={"generate": 1}, lease_seconds=30)
            assert (job.id, job.attempts) == (job_id, 1)
            await queue_jobs.hand_back(pool, worker_id="w-test", jobs=[(job.id, job.attempts)])
        starts = await pool.fetch("SELECT args FROM job_queue WHERE kind = 'webhook'")
    assert [json.loads(row["args"])["event"] for row in starts] == ["start"]


async def test_literal_private_addresses_and_bad_fields_are_422s_naming_the_field(database_url, pool):
    """Without WEBHOOK_ALLOW_PRIVATE: plain http, a literal loopback, private, link-local or
    metadata address, localhost, credentials and over-long URLs are 422s naming `webhook`;
    an unknown event, an empty list or events without a webhook name `webhookEvents`. Nothing
    is created."""
    settings = hook_settings(database_url, webhook_allow_private=False)
    cases = [
        ({"webhook": "http://example.com/hook"}, "webhook", "https"),
        ({"webhook": "https://127.0.0.1/hook"}, "webhook", "loopback"),
        ({"webhook": "https://10.0.0.1/hook"}, "webhook", "private"),
        ({"webhook": "https://[::1]:8443/hook"}, "webhook", "loopback"),
        ({"webhook": "https://[fd00::5]/hook"}, "webhook", "unique-local"),
        ({"webhook": "https://169.254.169.254/latest/meta-data"}, "webhook", "metadata"),
        ({"webhook": "https://localhost/hook"}, "webhook", "localhost"),
        ({"webhook": "https://user:pw@example.com/hook"}, "webhook", "credentials"),
        ({"webhook": "https://example.com/" + "a" * 2040}, "webhook", "2048"),
        ({"webhook": "/relative"}, "webhook", "https"),
        ({"webhook": 7}, "webhook", "string"),
        ({"webhook": "https://example.com/h", "webhookEvents": ["done"]}, "webhookEvents[0]", "start"),
        ({"webhook": "https://example.com/h", "webhookEvents": []}, "webhookEvents", "at least 1"),
        ({"webhookEvents": ["start"]}, "webhookEvents", "needs a webhook"),
    ]
    async with api_client(settings) as http:
        for body, field, words in cases:
            response = await create(http, **body)
            assert response.status_code == 422, (body, response.text)
            detail = response.json()["detail"]
            assert detail.startswith(f"{field}:") and words in detail, (body, detail)
        accepted = await create(http, webhook="https://example.com/hook")
        assert accepted.status_code == 202
        assert accepted.json()["webhookEvents"] == ["completed"]
    assert await pool.fetchval("SELECT count(*) FROM generations") == 1


@pytest.mark.parametrize(
    ("changes", "words"),
    [({"public_base_url": None}, "PUBLIC_BASE_URL"), ({"webhook_secret": None}, "WEBHOOK_SECRET")],
)
async def test_a_server_without_base_url_or_secret_refuses_webhooks(database_url, pool, changes, words):
    """Without PUBLIC_BASE_URL (a worker builds a delivery's URLs from it) or WEBHOOK_SECRET,
    `webhook` is a 422 saying which is missing; jobs without one are still accepted."""
    settings = hook_settings(database_url, **changes)
    async with api_client(settings) as http:
        refused = await create(http, webhook="https://example.com/hook")
        plain = await create(http)
    assert refused.status_code == 422 and words in refused.json()["detail"]
    assert refused.json()["detail"].startswith("webhook:")
    assert plain.status_code == 202 and plain.json()["webhook"] is None


async def test_a_name_resolving_to_a_private_address_is_refused_at_delivery(
    database_url, pool, receiver, start_delivering, connector
):
    """A host name that passes at POST but resolves to 10.0.0.1 at delivery (the test's
    resolver) fails the delivery for good with a readable error, opening no socket."""
    settings = hook_settings(database_url, webhook_allow_private=False)
    asked: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["10.0.0.1"]

    await start_delivering(settings, resolver=resolver)
    async with api_client(settings) as http:
        listed, delivery = await one_delivery(http, pool, webhook="https://hooks.customer.test/menagerie")
    assert asked == ["hooks.customer.test"]
    assert (delivery["status"], delivery["attempts"]) == ("failed", 1)
    assert delivery["error"] == (
        "hooks.customer.test resolves to a private address (10.0.0.1); webhooks call public addresses only"
    )
    assert [(a["outcome"], a["statusCode"]) for a in listed] == [("refused", None)]
    assert connector.opened == []


async def test_a_name_is_connected_to_at_the_address_checked_keeping_its_host_header(
    database_url, pool, receiver, start_delivering, connector
):
    """With WEBHOOK_ALLOW_PRIVATE, a name resolving to loopback is delivered: the connection
    goes to the address the resolver gave, the Host header is still the name."""
    settings = hook_settings(database_url)
    hook = await receiver(200)

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"] if host == "hooks.customer.test" else []

    await start_delivering(settings, resolver=resolver)
    async with api_client(settings) as http:
        await create(http, webhook=f"http://hooks.customer.test:{hook.port}/menagerie")
        await all_finished(pool, 1)
    [delivery] = hook.deliveries
    assert delivery["headers"]["host"] == f"hooks.customer.test:{hook.port}"
    assert connector.opened == [f"127.0.0.1:{hook.port}"]
    hook.verified()


@pytest.mark.parametrize("certified", ["hooks.customer.test", "someone-else.test"])
async def test_https_keeps_the_name_for_tls_while_connecting_to_the_checked_address(
    database_url, pool, receiver, start_delivering, connector, tmp_path, certified
):
    """Over https, the connection goes to the address the resolver gave (127.0.0.1) while TLS
    names the URL's host: a certificate for that name is accepted (delivered), one for
    another name is not (retried, the certificate named in the error)."""
    ca = trustme.CA()
    issued = ca.issue_cert(certified)
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    hook = await receiver(
        200, tls={"ssl_certfile": str(tmp_path / "cert.pem"), "ssl_keyfile": str(tmp_path / "key.pem")}
    )
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    settings = hook_settings(database_url, webhook_retry_schedule="10s")
    await start_delivering(settings, resolver=resolver, ssl_context=trusting)
    async with api_client(settings) as http:
        created = await create(http, webhook=f"https://hooks.customer.test:{hook.port}/menagerie")

        async def attempted() -> bool:
            return bool(await attempts_of(http, created))

        await wait_for(attempted)
        [attempt] = await attempts_of(http, created)
    assert connector.opened == [f"127.0.0.1:{hook.port}"]
    if certified == "hooks.customer.test":
        assert attempt["outcome"] == "delivered", attempt["error"]
        assert hook.deliveries[0]["headers"]["host"] == f"hooks.customer.test:{hook.port}"
    else:
        assert attempt["outcome"] == "retrying" and "certificate" in attempt["error"].lower()
        assert hook.deliveries == []


def test_during_a_rotation_both_secrets_sign_and_either_verifies():
    """Signed with two keys, a delivery's webhook-signature carries two `v1,` signatures, and
    a receiver holding either secret verifies it with standardwebhooks."""
    body = b'{"event":"completed"}'
    now = int(time.time())
    header = signing.signature(
        [webhook_key(SECRET), webhook_key(OTHER_SECRET)], message_id="msg_1", timestamp=now, body=body
    )
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": header}
    assert len(header.split(" ")) == 2
    for secret in (SECRET, OTHER_SECRET):
        assert Webhook(secret).verify(body, headers) == {"event": "completed"}


async def test_a_delivery_survives_sigkill_of_its_worker(
    database_url, pool, receiver, spawn, start_delivering
):
    """A worker process killed (SIGKILL) while the receiver holds its delivery open: after
    the lease lapses another worker delivers it again, with the same webhook-id."""
    hook = await receiver("hang", 200)
    env = worker_env(database_url, WEBHOOK_TIMEOUT="60", LEASE_SECONDS="2")
    settings = hook_settings(database_url, webhook_timeout=60)
    async with api_client(settings) as http:
        created = await create(http, webhook=hook.url)
        doomed = spawn("worker.py", env=env)
        await asyncio.wait_for(hook.arrived.wait(), 30)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        await start_delivering(settings, timing=Timing(poll_interval=3600, lease_seconds=2, shutdown_grace=0))
        await all_finished(pool, 1)
        listed = await attempts_of(http, created)
    assert_sent_again(hook, 2)
    [delivery] = await webhook_jobs(pool)
    assert (delivery["status"], delivery["attempts"]) == ("completed", 2)
    assert [(a["attempt"], a["outcome"]) for a in listed] == [(2, "delivered")]


class HeldProvider:
    """A provider whose images wait until the test releases them: generations as slow as it
    likes."""

    name = "local"

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def generate(
        self, *, prompt: str, model: str | None, animal: str, job_id: UUID, index: int
    ) -> Image:
        await self.release.wait()
        return Image(b"\x89PNG held", "image/png")


async def test_deliveries_do_not_wait_behind_slow_generations(
    database_url, pool, worker_pool, receiver, start_worker, connector
):
    """With every generation slot taken by a generation that does not finish and another one
    waiting, deliveries still go out at once: the webhook kind has slots of its own."""
    settings = hook_settings(database_url)
    hook = await receiver(200)
    provider = HeldProvider()
    deliveries = registry.webhook_deliveries(settings, worker_pool, connector=connector)
    try:
        await start_worker(
            dataclasses.replace(generate.kind(worker_pool, provider), slots=1),
            configured(deliveries.kind(), settings.kind("webhook")),
        )
        async with api_client(settings) as http:
            running = await create(http, webhook=hook.url, webhookEvents=["start"])
            waiting = await create(http, webhook=hook.url, webhookEvents=["start"])
            await all_finished(pool, 1)
            assert (await http.get(running.headers["location"])).json()["status"] == "processing"
            assert (await http.get(waiting.headers["location"])).json()["status"] == "pending"
            [body] = hook.verified()
            assert (body["event"], body["jobId"]) == ("start", running.json()["jobId"])
            provider.release.set()
            await wait_until_terminal(http, waiting.headers["location"])
            await all_finished(pool, 2)
    finally:
        provider.release.set()
        await deliveries.close()
    assert sorted(body["jobId"] for body in hook.verified()) == sorted(
        [running.json()["jobId"], waiting.json()["jobId"]]
    )


async def test_a_worker_process_serves_delivery_metrics(database_url, pool, receiver, spawn):
    """`menagerie worker` delivers webhooks and serves their metrics on WORKER_METRICS_PORT:
    attempts by outcome, a latency histogram, retries."""
    hook = await receiver(500, 200)
    port = free_port()
    spawn(
        "worker.py",
        env=worker_env(database_url, WEBHOOK_RETRY_SCHEDULE="100ms", WORKER_METRICS_PORT=str(port)),
    )
    async with api_client(hook_settings(database_url)) as http:
        await create(http, webhook=hook.url)
        await all_finished(pool, 1)
    async with httpx.AsyncClient() as scraper:
        text = (await scraper.get(f"http://127.0.0.1:{port}/metrics")).text
    assert 'menagerie_webhook_attempts_total{outcome="retrying"} 1.0' in text
    assert 'menagerie_webhook_attempts_total{outcome="delivered"} 1.0' in text
    assert "menagerie_webhook_retries_total 1.0" in text
    assert "menagerie_webhook_latency_seconds_count 2" in text
    assert 'menagerie_worker_jobs_total{event="completed",kind="webhook"} 1.0' in text


# Per-key webhook secrets (AUTH=keys)


async def key_with_secret(pool: asyncpg.Pool, name: str) -> tuple[str, str]:
    """A key as `keys create` makes it: (the API key, its webhook secret)."""
    shown, raw = keys.new_webhook_secret()
    token, _ = await keys.create(
        pool, name=name, admin=False, rate=1000, burst=1000, max_pending=None, webhook_secret=raw
    )
    return token, shown


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_keys_jobs_are_signed_with_its_own_secret_and_their_attempts_shown_to_it_alone(
    database_url, pool, receiver, start_delivering
):
    """With AUTH=keys and no WEBHOOK_SECRET, a job's deliveries are signed with its key's
    webhook secret (another key's does not verify them), carry image URLs signed for
    browsers, and its attempts are listed to that key only (404 for another)."""
    settings = hook_settings(database_url, auth="keys", webhook_secret=None)
    hook = await receiver(200)
    alice, alice_secret = await key_with_secret(pool, "alice")
    bob, bob_secret = await key_with_secret(pool, "bob")
    await start_delivering(settings)
    async with api_client(settings) as http:
        created = await http.post(
            "/generations", json={"numImages": 2, "webhook": hook.url}, headers=bearer(alice)
        )
        assert created.status_code == 202, created.text
        await all_finished(pool, 1)
        location = created.headers["location"]
        mine = await http.get(f"{location}/webhooks", headers=bearer(alice))
        theirs = await http.get(f"{location}/webhooks", headers=bearer(bob))
        [body] = hook.verified(alice_secret)
        with pytest.raises(WebhookVerificationError):
            hook.verified(bob_secret)
        with pytest.raises(WebhookVerificationError):
            hook.verified(SECRET)
        assert len(body["imageUrls"]) == 2 and all("sig=" in url for url in body["imageUrls"])
        image = await http.get(body["imageUrls"][0].removeprefix("http://menagerie.test"))
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert mine.status_code == 200 and [a["outcome"] for a in mine.json()] == ["delivered"]
    assert theirs.status_code == 404


async def test_a_key_without_a_webhook_secret_cannot_ask_for_webhooks_unless_the_server_has_one(
    database_url, pool
):
    """A key made without a webhook secret (before webhooks existed) gets a 422 naming
    `webhook` and the command that makes one; with WEBHOOK_SECRET set, the server's secret
    signs for it instead."""
    token, _ = await keys.create(pool, name="old", admin=False, rate=1000, burst=1000, max_pending=None)
    body = {"numImages": 1, "webhook": "https://example.com/hook"}
    async with api_client(hook_settings(database_url, auth="keys", webhook_secret=None)) as http:
        refused = await http.post("/generations", json=body, headers=bearer(token))
    async with api_client(hook_settings(database_url, auth="keys")) as http:
        accepted = await http.post("/generations", json=body, headers=bearer(token))
    assert refused.status_code == 422
    assert (
        refused.json()["detail"].startswith("webhook:")
        and "rotate-webhook-secret" in refused.json()["detail"]
    )
    assert accepted.status_code == 202


async def test_during_a_rotation_both_secrets_verify_and_afterwards_only_the_new_one(
    database_url, pool, receiver, start_delivering
):
    """After `keys rotate-webhook-secret`, deliveries carry a signature by the new secret and
    one by the old, so a receiver holding either verifies them; once the overlap is over,
    only the new secret signs."""
    settings = hook_settings(database_url, auth="keys", webhook_secret=None)
    hook = await receiver(200)
    token, first = await key_with_secret(pool, "carol")
    second, raw = keys.new_webhook_secret()
    await keys.rotate_webhook_secret(pool, name="carol", secret=raw, overlap=3600)
    await start_delivering(settings)
    async with api_client(settings) as http:
        await http.post("/generations", json={"numImages": 1, "webhook": hook.url}, headers=bearer(token))
        await all_finished(pool, 1)
        for secret in (first, second):
            assert [body["event"] for body in hook.verified(secret)] == ["completed"]
        assert len(hook.deliveries[0]["headers"]["webhook-signature"].split(" ")) == 2
        third, raw = keys.new_webhook_secret()
        await keys.rotate_webhook_secret(pool, name="carol", secret=raw, overlap=0)
        hook.deliveries.clear()
        await http.post("/generations", json={"numImages": 1, "webhook": hook.url}, headers=bearer(token))
        await all_finished(pool, 2)
    assert [body["event"] for body in hook.verified(third)] == ["completed"]
    for old in (first, second):
        with pytest.raises(WebhookVerificationError):
            hook.verified(old)


def test_keys_create_shows_a_webhook_secret_and_rotate_prints_a_new_one(database_url, spawn):
    """`keys create` shows the key's webhook secret once (on stderr: the key stays alone on
    stdout); `keys rotate-webhook-secret NAME` prints a new one alone on stdout, and an
    unknown name exits 1."""

    code, out, err = run_keys(spawn, database_url, "create", "dora")
    assert code == 0 and out.strip().startswith("mng_")
    [made] = [word for word in err.split() if word.startswith("whsec_")]
    webhook_key(made)
    code, out, err = run_keys(spawn, database_url, "rotate-webhook-secret", "dora", "--overlap", "1h")
    rotated = out.strip()
    assert code == 0 and rotated.startswith("whsec_") and rotated != made and "3600" in err
    webhook_key(rotated)
    assert run_keys(spawn, database_url, "rotate-webhook-secret", "nobody")[0] == 1


async def test_migration_0010_rolls_back_and_applies_again(database_url, pool):
    """Rolling the webhooks migration back keeps every generation (webhooks, attempts and key
    secrets go; job_events_add enqueues nothing more), and applying it again works."""
    from tests.test_upgrade import apply

    settings = hook_settings(database_url)
    async with api_client(settings) as http:
        created = await create(http, webhook="https://example.com/hook")
    await pool.close()
    apply(database_url, rollback="0010.webhooks")
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('webhooks')") is None
        assert "webhook_outbox" not in await conn.fetchval(
            "SELECT prosrc FROM pg_proc WHERE proname = 'job_events_add'"
        )
        assert await conn.fetchval("SELECT count(*) FROM generations") == 1
        apply(database_url)
        assert await conn.fetchval("SELECT count(*) FROM webhooks") == 0
        assert "webhook_outbox" in await conn.fetchval(
            "SELECT prosrc FROM pg_proc WHERE proname = 'job_events_add'"
        )
    finally:
        await conn.close()
    assert created.status_code == 202
