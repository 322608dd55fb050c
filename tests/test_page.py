"""The dashboard's files as the server serves them (the browser tests are in
tests/test_dashboard.py), and the job history its detail view shows."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import insert_generations, set_status

STATIC = Path(__file__).resolve().parent.parent / "app" / "static"


async def test_the_page_and_every_file_it_uses_are_served_with_validators(client):
    """GET / is the page; each stylesheet, script, module import and icon it names is served
    with its type, a strong ETag and Cache-Control: no-cache, and a second request with that
    ETag is a bodiless 304."""
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    named = set(re.findall(r'(?:href|src)="(/static/[^"]+)"', html))
    for module in STATIC.glob("js/*.js"):
        named |= {f"/static/js/{name}" for name in re.findall(r'from "\./([\w-]+\.js)"', module.read_text())}
    assert {"/static/app.css", "/static/js/main.js", "/static/js/api.js", "/static/js/feed.js"} <= named
    for path in sorted(named | {"/"}):
        first = await client.get(path)
        assert first.status_code == 200, path
        assert first.headers["cache-control"] == "no-cache", path
        etag = first.headers["etag"]
        assert re.fullmatch(r'"[0-9a-f]{32}"', etag), path
        again = await client.get(path, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"", path
    assert (await client.get("/static/js/main.js")).headers["content-type"].startswith("text/javascript")


async def test_nothing_the_page_loads_comes_from_elsewhere(client):
    """No file of the page names another origin, and its Content-Security-Policy allows only
    this server (and PUBLIC_BASE_URL's origin for images)."""
    for path in STATIC.rglob("*"):
        if path.suffix in {".html", ".css", ".js"}:
            text = path.read_text()
            assert not re.search(r"https?://", text), path
            assert "//cdn" not in text and "@import" not in text, path
    policy = (await client.get("/")).headers["content-security-policy"]
    assert "default-src 'self'" in policy and "img-src 'self' http://menagerie.test" in policy
    assert (await client.get("/static/nothing.js")).status_code == 404


async def test_a_jobs_history_lists_its_changes_oldest_first(client, pool):
    """GET /generations/{id}/history: created, started (attempt 1), the end, in order, with
    what each adds; an unknown job is a 404."""
    [job_id] = await insert_generations(pool, 1, num_images=2)
    await set_status(pool, [job_id], "processing")
    await pool.execute(
        "WITH claimed AS (UPDATE job_queue SET version = version + 1 WHERE id = $1 RETURNING id, version) "
        "SELECT job_events_add(ARRAY[id], ARRAY[version], ARRAY['started'], ARRAY['processing'], "
        "ARRAY[jsonb_build_object('attempt', 1)]) FROM claimed",
        job_id,
    )
    await client.post(f"/generations/{job_id}/cancel")
    history = (await client.get(f"/generations/{job_id}/history")).json()
    assert [(moment["type"], moment["status"]) for moment in history] == [
        ("created", "pending"),
        ("started", "processing"),
        ("canceled", "canceled"),
    ]
    assert history[1]["data"] == {"attempt": 1} and history[0]["data"] is None
    missing = await client.get("/generations/00000000-0000-0000-0000-000000000000/history")
    assert missing.status_code == 404
