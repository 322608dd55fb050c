"""Following jobs as they change: one LISTEN connection per server process, fanned out
in-process to every event stream and `Prefer: wait` request, however many there are.

Every statement that changes a watched job records an event and NOTIFYs the ids of the jobs
it changed; a notification only wakes the requests watching those ids, which then read the
job again through the pool. After
the listener reconnects, every watcher is woken, since notifications may have been missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from app.api.models import Signer, job_json
from app.db import JOB_EVENTS_CHANNEL, SERVER_APPLICATION, Listener
from app.images import generations
from app.images.generations import Generation
from app.queue.kinds import TERMINAL, Status


class JobWatch:
    def __init__(self, url: str) -> None:
        self._watchers: dict[UUID, set[asyncio.Event]] = {}
        self._everything: set[asyncio.Event] = set()
        self.listener = Listener(
            url,
            channels={JOB_EVENTS_CHANNEL: self._changed},
            on_connect=self._wake_all,
            application_name=SERVER_APPLICATION,
        )

    @contextmanager
    def watch(self, job_id: UUID) -> Iterator[asyncio.Event]:
        """An event set whenever the job may have changed (clear it before reading the job)."""
        event = asyncio.Event()
        self._watchers.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            events = self._watchers.get(job_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._watchers[job_id]

    @contextmanager
    def watch_all(self) -> Iterator[asyncio.Event]:
        """An event set whenever any watched job may have changed."""
        event = asyncio.Event()
        self._everything.add(event)
        try:
            yield event
        finally:
            self._everything.discard(event)

    def _changed(self, payload: str) -> None:
        """The payload is the ids of the jobs that changed, comma separated (job_events_add)."""
        for event in self._everything:
            event.set()
        for text in payload.split(","):
            try:
                events = self._watchers.get(UUID(text))
            except ValueError:
                continue
            for event in events or ():
                event.set()

    def _wake_all(self) -> None:
        for event in self._everything:
            event.set()
        for events in self._watchers.values():
            for event in events:
                event.set()


async def wait_until_terminal(
    pool: asyncpg.Pool, watch: JobWatch, *, job_id: UUID, timeout: float, viewer: int | None = None
) -> Generation | None:
    """The job once it is terminal, or as it is after `timeout` seconds (None if unknown, or
    not key `viewer`'s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with watch.watch(job_id) as changed:
        while True:
            changed.clear()
            job = await generations.get(pool, job_id=job_id, viewer=viewer)
            remaining = deadline - loop.time()
            if job is None or job.status in TERMINAL or remaining <= 0:
                return job
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass


@dataclass(frozen=True)
class Seen:
    """What a client has been told of a job: the event id encodes it, so a client that
    reconnects with Last-Event-ID is sent exactly what it missed."""

    status: Status
    images: int

    @property
    def event_id(self) -> str:
        return f"{self.status.value}.{self.images}"

    @classmethod
    def parse(cls, event_id: str | None) -> Seen | None:
        try:
            status, images = (event_id or "").split(".")
            return cls(Status(status), int(images))
        except ValueError:
            return None


def sse(event: str, event_id: str, data: str) -> str:
    return f"event: {event}\nid: {event_id}\ndata: {data}\n\n"


def changes(
    seen: Seen | None, job: Generation, render: Callable[[Generation], str]
) -> Iterator[tuple[str, Seen]]:
    """The events that take a client from `seen` to `job`, in order: a first `job` event for a
    new client; then `status` for a job that started, one `image` per newly stored image, and
    `status` when the job ends (or is retried)."""
    now = Seen(job.status, len(job.image_indexes))
    if seen is None:
        yield sse("job", now.event_id, render(job)), now
        return
    images_done = seen.images
    ended = job.status in TERMINAL
    if job.status != seen.status and not ended:
        seen = Seen(job.status, images_done)
        yield sse("status", seen.event_id, render(job)), seen
    for count in range(images_done + 1, now.images + 1):
        seen = Seen(seen.status, count)
        yield sse("image", seen.event_id, render(job)), seen
    if job.status != seen.status:
        yield sse("status", now.event_id, render(job)), now


async def stream(
    pool: asyncpg.Pool,
    watch: JobWatch,
    *,
    job_id: UUID,
    last_event_id: str | None,
    base_url: str,
    heartbeat: float,
    viewer: int | None = None,
    signer: Signer | None = None,
) -> AsyncIterator[str]:
    """Server-Sent Events for one job until it is terminal; comments keep idle streams open.
    The job is read after the watch starts, so no change can fall between the two. Yields
    nothing at all for an unknown job (or one key `viewer` does not own): the caller answers 404
    when the first item is missing."""

    def render(current: Generation) -> str:
        return job_json(current, base_url=base_url, signer=signer).decode()

    seen = Seen.parse(last_event_id)
    with watch.watch(job_id) as changed:
        current = await generations.get(pool, job_id=job_id, viewer=viewer)
        if current is None:
            return
        yield "retry: 1000\n\n"
        while current is not None:
            for text, reached in changes(seen, current, render):
                yield text
                seen = reached
            if current.status in TERMINAL:
                return
            try:
                await asyncio.wait_for(changed.wait(), heartbeat)
            except TimeoutError:
                # Read the job anyway: a lost notification delays an event by one heartbeat.
                yield ": keep-alive\n\n"
            changed.clear()
            current = await generations.get(pool, job_id=job_id, viewer=viewer)
