"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a real
server and worker process on a fresh database. Every test records every request the page makes
(none may leave the server's origin) and every console message (no errors). Screenshots go to
test-artifacts/dashboard/ (not tracked), to be looked at.

Without chromium (`apt-get install chromium`; .ci/run installs it) these tests are skipped,
visibly; Playwright never downloads a browser of its own here."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Request, async_playwright, expect

from app import keys
from app.images import generations
from app.images.animals import ANIMALS
from app.images.providers.render import render_png
from tests.support import free_port, insert_generations, set_status, wait_ready

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDE = {"width": 1440, "height": 900}
NARROW = {"width": 375, "height": 812}

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)

expect.set_options(timeout=20_000)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """One chromium for the module's tests (each gets its own context)."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        await launched.close()


@dataclass
class Service:
    """A server and a worker on one database; the server can be killed and started again."""

    base: str
    env: dict[str, str]
    spawn: Callable[..., object]
    server: object = None

    async def start_server(self) -> None:
        self.server = self.spawn("server.py", env=self.env)
        await wait_ready(self.base, self.server)

    def kill_server(self) -> None:
        self.server.send_signal(signal.SIGKILL)
        self.server.wait()


@pytest.fixture
def service_factory(database_url, spawn) -> Callable[..., Awaitable[Service]]:
    """Start a server and a worker on the test's database, with images taking `delay`
    seconds each (a worker only when `worker` is true, running `slots` jobs at once)."""

    async def start(
        *, delay: float = 0.4, worker: bool = True, slots: int = 4, env: dict[str, str] | None = None
    ) -> Service:
        port = free_port()
        env = {
            "DATABASE_URL": database_url,
            "AUTO_MIGRATE": "false",
            "PORT": str(port),
            "IMAGE_PROVIDER_DELAY": str(delay),
            "IMAGE_SIZE": "128",
            "SSE_HEARTBEAT": "1",
            "DB_POOL_SIZE": "5",
            "WORKER_CONCURRENCY": str(slots),
            **(env or {}),
        }
        service = Service(f"http://127.0.0.1:{port}", env, spawn)
        if worker:
            spawn("worker.py", env=env)
        await service.start_server()
        return service

    return start


@dataclass
class Watched:
    """A page and everything it did: each request's URL, each console error."""

    page: Page
    origin: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def assert_clean(self, *, allowed: Callable[[str], bool] = lambda text: False) -> None:
        """No request left the server's origin, and no console error (but those `allowed`)."""
        assert self.requests, "no request was recorded"
        elsewhere = [url for url in self.requests if not same_origin(url, self.origin)]
        assert elsewhere == [], elsewhere
        errors = [text for text in self.errors if not allowed(text)]
        assert errors == [], errors


def same_origin(url: str, origin: str) -> bool:
    parts, mine = urlsplit(url), urlsplit(origin)
    return (parts.scheme, parts.netloc) == (mine.scheme, mine.netloc)


@pytest.fixture
async def open_page(browser) -> AsyncIterator[Callable[..., Awaitable[Watched]]]:
    """Open the dashboard of a service in a new browser context of the given viewport,
    recording its requests and console errors."""
    contexts = []

    async def open_(service: Service, viewport: dict[str, int] = WIDE, *, live: bool = True) -> Watched:
        context = await browser.new_context(viewport=viewport)
        contexts.append(context)
        page = await context.new_page()
        watched = Watched(page, service.base)

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                watched.errors.append(f"{message.text} ({message.location.get('url')})")

        def on_request(request: Request) -> None:
            watched.requests.append(request.url)

        page.on("console", on_console)
        page.on("pageerror", lambda error: watched.errors.append(f"uncaught: {error}"))
        page.on("request", on_request)
        await page.goto(service.base + "/")
        if live:
            await expect(page.get_by_test_id("connection")).to_have_text("Live")
        return watched

    yield open_
    for context in contexts:
        await context.close()


async def screenshot(page: Page, name: str, *, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def card(page: Page, job_id: str):
    return page.locator(f'[data-testid="job"][data-job-id="{job_id}"]')


RECORD_STATUSES = """() => {
    window.statusesSeen = {};
    window.notReloaded = true;
    const record = (node) => {
        const id = node.dataset.jobId;
        const seen = (window.statusesSeen[id] ||= []);
        if (seen[seen.length - 1] !== node.dataset.status) seen.push(node.dataset.status);
    };
    new MutationObserver((mutations) => {
        for (const mutation of mutations) {
            const nodes = mutation.type === "attributes" ? [mutation.target] : [...mutation.addedNodes];
            for (const node of nodes) if (node.dataset && node.dataset.testid === "job") record(node);
        }
    }).observe(document.querySelector('[data-testid="job-list"]'),
               {subtree: true, childList: true, attributes: true, attributeFilter: ["data-status"]});
}"""


async def new_job_from_form(page: Page, images: int, animal: str = "") -> str:
    """Submit the form; the id of the card that appears for it."""
    before = set(
        await page.locator('[data-testid="job"]').evaluate_all("cards => cards.map(c => c.dataset.jobId)")
    )
    await page.get_by_test_id("num-images").fill(str(images))
    await page.get_by_test_id("animal").select_option(animal)
    await page.get_by_test_id("submit").click()
    for _ in range(200):
        ids = await page.locator('[data-testid="job"]').evaluate_all(
            "cards => cards.map(c => c.dataset.jobId)"
        )
        new = [job_id for job_id in ids if job_id not in before]
        if new:
            return new[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no card appeared for the new job")


async def test_three_images_asked_for_in_the_form_arrive_live_without_a_reload(service_factory, open_page):
    """Submitting 3 images (while the worker's one slot is busy): a card appears pending, goes
    processing then completed, and its 3 images load (naturalWidth > 0), all without reloading the page; the queue strip shows the
    live worker. Screenshots of the list and the detail at 1,440 px."""
    service = await service_factory(delay=0.5, slots=1)
    watched = await open_page(service)
    page = watched.page
    await expect(page.get_by_test_id("workers")).to_have_text("1")
    await page.evaluate(RECORD_STATUSES)
    async with httpx.AsyncClient(base_url=service.base) as http:
        # Holds the worker's one slot for a second, so that the new job is seen waiting.
        await http.post("/generations", json={"numImages": 2, "animal": "cat"})
    job_id = await new_job_from_form(page, 3, "owl")
    job = card(page, job_id)
    await expect(job).to_have_attribute("data-status", "completed")
    images = job.get_by_test_id("job-image")
    await expect(images).to_have_count(3)
    await page.wait_for_function(
        """(id) => [...document.querySelectorAll(`[data-job-id="${id}"] [data-testid="job-image"]`)]
                     .every((img) => img.complete && img.naturalWidth > 0)""",
        arg=job_id,
    )
    statuses = await page.evaluate("(id) => window.statusesSeen[id]", job_id)
    assert statuses == ["pending", "processing", "completed"]
    assert await page.evaluate("window.notReloaded") is True
    await expect(job).to_contain_text("owl")
    await screenshot(page, "list-1440")
    await job.get_by_test_id("open-job").click()
    detail = page.get_by_test_id("detail")
    await expect(detail).to_be_visible()
    await expect(detail.get_by_test_id("detail-image")).to_have_count(3)
    await expect(detail.get_by_test_id("cancel")).to_be_hidden()
    await expect(detail.get_by_test_id("detail-history")).to_contain_text("image 3 stored")
    assert f'"jobId": "{job_id}"' in await detail.get_by_test_id("detail-json").text_content()
    await page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=detail-image]')].every((img) => img.complete && img.naturalWidth > 0)"
    )
    await screenshot(page, "detail-1440")
    watched.assert_clean()


async def test_a_processing_job_canceled_from_its_detail_view_reads_canceled(service_factory, open_page):
    """Opening a processing job and pressing cancel: the card and the detail read canceled
    and the cancel button goes away."""
    service = await service_factory(delay=1.5)
    watched = await open_page(service)
    page = watched.page
    job_id = await new_job_from_form(page, 5)
    job = card(page, job_id)
    await expect(job).to_have_attribute("data-status", "processing")
    await job.get_by_test_id("open-job").click()
    detail = page.get_by_test_id("detail")
    await expect(detail.get_by_test_id("cancel")).to_be_visible()
    await detail.get_by_test_id("cancel").click()
    await expect(job).to_have_attribute("data-status", "canceled")
    await expect(detail.get_by_test_id("detail-status")).to_have_text("canceled")
    await expect(detail.get_by_test_id("cancel")).to_be_hidden()
    async with httpx.AsyncClient(base_url=service.base) as http:
        assert (await http.get(f"/generations/{job_id}")).json()["status"] == "canceled"
    watched.assert_clean()


async def test_a_bad_count_shows_the_apis_error_next_to_the_form(service_factory, open_page):
    """0 images: the API's problem detail, in words, shows next to the form, and no job is
    made."""
    service = await service_factory()
    watched = await open_page(service)
    page = watched.page
    await page.get_by_test_id("num-images").fill("0")
    await page.get_by_test_id("submit").click()
    async with httpx.AsyncClient(base_url=service.base) as http:
        expected = (await http.post("/generations", json={"numImages": 0})).json()["detail"]
        listed = (await http.get("/generations")).json()
    await expect(page.get_by_test_id("form-error")).to_have_text(expected)
    assert "greater than or equal to 1" in expected
    assert listed == [] and await page.get_by_test_id("job").count() == 0
    watched.assert_clean(allowed=lambda text: "422" in text)


async def test_jobs_survive_a_reload_and_older_ones_load_as_the_list_scrolls(
    service_factory, open_page, pool
):
    """With 70 jobs: the page shows the newest 30; reloading shows them again; scrolling to
    the end of the list loads the next 30, then the last 10, newest first throughout."""
    service = await service_factory(worker=False)
    ids = []
    for _ in range(70):  # one at a time: each its own created_at
        ids += await insert_generations(pool, 1)
    newest_first = [str(job_id) for job_id in reversed(ids)]
    watched = await open_page(service)
    page = watched.page
    cards = page.get_by_test_id("job")
    await expect(cards).to_have_count(30)
    await page.reload()
    await expect(page.get_by_test_id("connection")).to_have_text("Live")
    await expect(cards).to_have_count(30)
    assert await cards.evaluate_all("cs => cs.map(c => c.dataset.jobId)") == newest_first[:30]
    await page.get_by_test_id("load-more").scroll_into_view_if_needed()
    await expect(cards).to_have_count(60)
    await page.get_by_test_id("load-more").scroll_into_view_if_needed()
    await expect(cards).to_have_count(70)
    await expect(page.get_by_test_id("load-more")).to_be_hidden()
    assert await cards.evaluate_all("cs => cs.map(c => c.dataset.jobId)") == newest_first
    watched.assert_clean()


async def test_the_page_says_it_lost_the_stream_and_catches_up_after_a_server_restart(
    service_factory, open_page, pool
):
    """Killing the server while the page is open: the page says it lost the stream; jobs
    created and finished while the server is down appear, completed, once it is back, with
    no reload: the page resumed from the last event it applied (Last-Event-ID)."""
    service = await service_factory(delay=0.1)
    watched = await open_page(service)
    page = watched.page
    await page.evaluate(RECORD_STATUSES)
    first = await new_job_from_form(page, 1)
    await expect(card(page, first)).to_have_attribute("data-status", "completed")
    service.kill_server()
    await expect(page.get_by_test_id("connection")).to_contain_text("Lost the stream")
    await screenshot(page, "lost-1440")
    later = [str(job_id) for job_id in await insert_generations(pool, 2, num_images=2)]

    async def done() -> bool:
        return await pool.fetchval("SELECT count(*) FROM finished_jobs WHERE status = 'completed'") == 3

    for _ in range(400):
        if await done():
            break
        await asyncio.sleep(0.05)
    before_restart = len(watched.requests)
    await service.start_server()
    await expect(page.get_by_test_id("connection")).to_have_text("Live")
    for job_id in later:
        await expect(card(page, job_id)).to_have_attribute("data-status", "completed")
        await expect(card(page, job_id).get_by_test_id("job-image")).to_have_count(2)
    assert await page.evaluate("window.notReloaded") is True
    reconnects = [url for url in watched.requests[before_restart:] if "/generations/events" in url]
    assert reconnects, "the page did not open the stream again"
    assert all("/generations?" not in url for url in watched.requests[before_restart:]), (
        "the page read the list again instead of resuming the stream"
    )
    # The browser reports the stream cut by the kill and each refused request while the
    # server is down (net::ERR_…); nothing else.
    watched.assert_clean(allowed=lambda text: "Failed to load resource: net::ERR_" in text)


async def test_at_375_px_the_keyboard_alone_asks_opens_and_closes(service_factory, open_page):
    """On a 375 px screen, with the keyboard only: tab to the count, type it, tab to the
    animal and the button, press Enter; tab to the new card and open it with Enter; Escape
    closes the detail and gives focus back to the card. Every field has a label, nothing is
    wider than the screen. Screenshots of the list and the detail at 375 px."""
    service = await service_factory(delay=0.2)
    watched = await open_page(service, NARROW)
    page = watched.page
    unlabeled = await page.evaluate(
        "() => [...document.querySelectorAll('input, select')].filter((f) => !f.hidden && f.labels.length === 0).map((f) => f.id)"
    )
    assert unlabeled == []
    await page.keyboard.press("Tab")
    focused = await page.evaluate("document.activeElement.dataset.testid")
    while focused != "num-images":
        await page.keyboard.press("Tab")
        focused = await page.evaluate("document.activeElement.dataset.testid")
    await page.keyboard.press("Control+A")
    await page.keyboard.type("2")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.dataset.testid") == "animal"
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.dataset.testid") == "submit"
    await page.keyboard.press("Enter")
    job = page.get_by_test_id("job").first
    await expect(job).to_have_attribute("data-status", "completed")
    await expect(job.get_by_test_id("job-image")).to_have_count(2)
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.dataset.testid") == "open-job"
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375
    await screenshot(page, "list-375", full_page=True)
    await page.keyboard.press("Enter")
    await expect(page.get_by_test_id("detail")).to_be_visible()
    await expect(page.get_by_test_id("detail-image")).to_have_count(2)
    await page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=detail-image]')].every((img) => img.complete && img.naturalWidth > 0)"
    )
    await screenshot(page, "detail-375")
    await page.keyboard.press("Escape")
    await expect(page.get_by_test_id("detail")).to_be_hidden()
    assert await page.evaluate("document.activeElement.dataset.testid") == "open-job"
    watched.assert_clean()


CONTRAST = """() => {
    const rgb = (text) => text.match(/[\\d.]+/g).map(Number);
    const luminance = ([r, g, b]) => {
        const [R, G, B] = [r, g, b].map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
        return 0.2126 * R + 0.7152 * G + 0.0722 * B;
    };
    const background = (node) => {
        for (; node; node = node.parentElement) {
            const colour = rgb(getComputedStyle(node).backgroundColor);
            if (colour.length < 4 || colour[3] > 0) return colour.slice(0, 3);
        }
        return [255, 255, 255];
    };
    const poor = [];
    for (const node of document.querySelectorAll("body *")) {
        const own = [...node.childNodes].some((child) => child.nodeType === 3 && child.textContent.trim());
        if (!own || !node.checkVisibility()) continue;
        const style = getComputedStyle(node);
        const fg = luminance(rgb(style.color)), bg = luminance(background(node));
        const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
        if (ratio < 4.5) poor.push(`${node.tagName}.${node.className} "${node.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)}`);
    }
    return poor;
}"""


async def test_every_text_has_readable_contrast(service_factory, open_page):
    """Every visible text on the page, the job cards and the detail view included, has a
    contrast ratio of at least 4.5:1 with its background (WCAG AA)."""
    service = await service_factory(delay=0.1)
    watched = await open_page(service)
    page = watched.page
    for animal in ("owl", "cat"):
        job_id = await new_job_from_form(page, 1, animal)
        await expect(card(page, job_id)).to_have_attribute("data-status", "completed")
    assert await page.evaluate(CONTRAST) == []
    await page.get_by_test_id("open-job").first.click()
    await expect(page.get_by_test_id("detail")).to_be_visible()
    assert await page.evaluate(CONTRAST) == []
    watched.assert_clean()


async def test_the_first_screen_with_500_jobs_in_the_database(service_factory, open_page, pool, capsys):
    """With 500 jobs of 2 images each (nearly all completed; the newest failed, processing
    and pending), the page opens and shows its first screen: its first page of cards, the
    thumbnails in view loaded. The time it took is printed and saved beside the screenshots,
    not asserted (a shared machine's clock). The README's screenshot is this one."""
    service = await service_factory(worker=False)
    made = await generations.create_many(
        pool, [generations.Request(2, ANIMALS[n % len(ANIMALS)], 3) for n in range(500)]
    )
    rendered = {
        (animal, idx): render_png(animal, seed=animal.encode(), index=idx, size=128)
        for animal in ANIMALS
        for idx in range(2)
    }
    # create_many gives all 500 one created_at: the list orders them by id within it.
    newest = sorted(made, key=lambda job: job.id, reverse=True)
    failed, processing, pending = newest[0], newest[1], newest[2]
    stored = [(job, idx) for job in newest if job not in (failed, pending) for idx in range(2)]
    stored.remove((processing, 1))
    await pool.executemany(
        "INSERT INTO images (job_id, idx, png, sha256) VALUES ($1, $2, $3, $4)",
        [
            (job.id, idx, png, hashlib.sha256(png).hexdigest())
            for job, idx in stored
            for png in [rendered[(job.animal, idx)]]
        ],
    )
    await set_status(pool, [processing.id], "processing")
    await set_status(pool, [failed.id], "failed", error="the provider timed out, 3 attempts")
    await set_status(pool, [job.id for job in newest[3:]], "completed")
    watched = await open_page(service)  # warms the browser's connection and caches
    page = watched.page
    started = time.perf_counter()
    await page.reload()
    await page.wait_for_function(
        """() => {
            const cards = document.querySelectorAll('[data-testid="job"]');
            if (cards.length < 30) return false;
            const visible = [...document.querySelectorAll('[data-testid="job-image"]')]
                .filter((img) => img.getBoundingClientRect().top < innerHeight);
            return visible.length > 0 && visible.every((img) => img.complete && img.naturalWidth > 0);
        }"""
    )
    seconds = time.perf_counter() - started
    in_page = await page.evaluate("performance.now()")
    await expect(page.get_by_test_id("queue-processing")).to_have_text("1")
    await screenshot(page, "first-screen-500-jobs-1440")
    report = (
        f"first screen with 500 jobs: {seconds * 1000:.0f} ms from reload to the first page of "
        f"cards with their thumbnails ({in_page:.0f} ms by the page's clock)"
    )
    (ARTIFACTS / "first-screen.txt").write_text(report + "\n")
    with capsys.disabled():
        print(f"\n{report}")
    watched.assert_clean()


async def test_with_keys_the_page_asks_for_one_keeps_it_and_renews_its_stream_token(
    service_factory, open_page, pool
):
    """With AUTH=keys: the page asks for a key before anything else; with it, a job asked for
    completes live and its (signed) images load; the queue strip, admin-only, is hidden for
    this key. After the server was down longer than a stream token lives, EventSource's own
    reconnection is refused (401) and the page reconnects with a fresh token, showing the jobs
    finished meanwhile. A reload keeps the key (the tab's session storage)."""
    service = await service_factory(delay=0.2, env={"AUTH": "keys", "STREAM_TOKEN_TTL": "1"})
    alice, record = await keys.create(
        pool, name="alice", admin=False, rate=1000, burst=1000, max_pending=None
    )
    watched = await open_page(service, live=False)
    page = watched.page
    await expect(page.get_by_test_id("key-form")).to_be_visible()
    await expect(page.get_by_test_id("new-job-form")).to_be_hidden()
    await screenshot(page, "key-1440")
    await page.get_by_test_id("key").fill(alice)
    await page.get_by_test_id("key").press("Enter")
    await expect(page.get_by_test_id("connection")).to_have_text("Live")
    await expect(page.get_by_test_id("key-form")).to_be_hidden()
    await page.evaluate(RECORD_STATUSES)
    job_id = await new_job_from_form(page, 2)
    await expect(card(page, job_id)).to_have_attribute("data-status", "completed")
    await page.wait_for_function(
        """(id) => [...document.querySelectorAll(`[data-job-id="${id}"] [data-testid="job-image"]`)]
                     .filter((img) => img.complete && img.naturalWidth > 0).length === 2""",
        arg=job_id,
    )
    await expect(page.locator(".queue")).to_be_hidden()
    service.kill_server()
    await expect(page.get_by_test_id("connection")).to_contain_text("Lost the stream")
    # While the server is down, alice's job is made in the database; the worker finishes it.
    [later] = await generations.create_many(pool, [generations.Request(1, "owl", 3, owner=record.id)])
    await asyncio.sleep(1.5)  # the page's stream token expires
    before_restart = len(watched.requests)
    await service.start_server()
    await expect(page.get_by_test_id("connection")).to_have_text("Live")
    tokens = [url for url in watched.requests[before_restart:] if url.endswith("/generations/events/token")]
    assert tokens, "the page did not ask for a fresh stream token"
    await expect(card(page, str(later.id))).to_have_attribute("data-status", "completed")
    assert await page.evaluate("window.notReloaded") is True
    await page.reload()
    await expect(page.get_by_test_id("connection")).to_have_text("Live")
    await expect(page.get_by_test_id("key-form")).to_be_hidden()
    await expect(card(page, job_id)).to_have_attribute("data-status", "completed")
    # The browser reports the outage, the refused reconnection with the expired token (401)
    # and the queue strip's refusal (403, admin-only); nothing else.
    watched.assert_clean(allowed=lambda text: "Failed to load resource" in text)
