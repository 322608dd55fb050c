"""One event stream of every change to generations (GET /generations/events), so that a page
follows all its jobs over one connection.

Each event is a row of job_events, and its SSE id is that row's id: durable and increasing, so a
client that reconnects with `Last-Event-ID`, even to another server or after a restart, is sent
what happened after it, without a gap. An id is taken when its event is inserted, so a
transaction may commit id 11 before another commits id 10. The stream therefore passes ids in
order and holds back at a gap, until the gap is filled, or until every transaction that was
running when the gap was first seen has ended: an id still missing then was rolled back (or its
job deleted by retention) and will never come (migration 0011 makes sure a transaction has its
id before it takes an event id, so that it is among those).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg

from app.api.models import Signer
from app.api.streams import JobWatch, sse
from app.images import generations
from app.images.generations import Change, Generation
from app.queue import jobs

BATCH = 200
"""Events read per statement."""
GAP_RECHECK = (0.05, 2.0)
"""While a gap holds the stream back: the first and the longest wait before looking again (a
rolled-back id sends no notification)."""
START_SETTLE = 2.0
"""How long a new follower waits for transactions running when it started to end, so that
their changes are in whatever the client reads next (its first page of jobs)."""
SETTLE_POLL = 0.02


class Follower:
    """Where one stream is in job_events: `last`, the last id passed; ids up to `settled` are
    final (a missing one never comes); `gap`, the snapshot under which a gap was first seen and
    the highest id read then."""

    def __init__(self, last: int, *, viewer: int | None) -> None:
        self.last = last
        self.viewer = viewer
        self.settled = last
        self.gap: tuple[str, int] | None = None

    async def next_batch(self, pool: asyncpg.Pool) -> tuple[list[Change], bool, bool]:
        """The next events in order, up to a gap still open; whether a gap holds the rest
        back; whether a whole batch was read (more may follow at once)."""
        if self.gap is not None and await jobs.events_settled(pool, snapshot=self.gap[0]):
            self.settled = max(self.settled, self.gap[1])
            self.gap = None
        found, snapshot = await generations.events_after(
            pool, after=self.last, limit=BATCH, viewer=self.viewer
        )
        passed: list[Change] = []
        for change in found:
            if change.event_id != self.last + 1 and change.event_id > self.settled:
                if self.gap is None and snapshot is not None:
                    self.gap = (snapshot, found[-1].event_id)
                return passed, True, False
            self.last = change.event_id
            if self.gap is not None and self.last >= self.gap[1]:
                self.gap = None
            passed.append(change)
        return passed, False, len(found) == BATCH


async def start_position(pool: asyncpg.Pool) -> int:
    """The last event id now, once the transactions running now have ended (at most
    START_SETTLE seconds): a change they commit later with a lower id is already in what the
    client reads after the stream's `ready` event."""
    last, snapshot = await jobs.events_head(pool)
    for _ in range(int(START_SETTLE / SETTLE_POLL)):
        if await jobs.events_settled(pool, snapshot=snapshot):
            break
        await asyncio.sleep(SETTLE_POLL)
    return last


def rendered(
    changes: list[Change], render: Callable[[Generation, Signer | None], str], signer: Signer | None
) -> list[tuple[int, str]]:
    """The events of generations among `changes`, (id, text): for a job changed several
    times, only its last change, since every event carries the job as it is now."""
    latest = {change.job.id: change.event_id for change in changes if change.job is not None}
    return [
        (change.event_id, sse(change.type, str(change.event_id), render(change.job, signer)))
        for change in changes
        if change.job is not None and latest[change.job.id] == change.event_id
    ]


async def stream(
    pool: asyncpg.Pool,
    watch: JobWatch,
    *,
    after: int | None,
    heartbeat: float,
    viewer: int | None,
    render: Callable[[Generation, Signer | None], str],
    signer: Callable[[], Awaitable[Signer | None]],
) -> AsyncIterator[str]:
    """Server-Sent Events: `ready` (its id the position the stream starts from), then every
    change after `after` (None: from now) to the generations key `viewer` owns (None: all),
    until the client goes away. Image URLs are signed afresh for each batch (`signer`): a
    stream outlives any one signature."""
    with watch.watch_all() as changed:
        resumed = after is not None
        follower = Follower(after if after is not None else await start_position(pool), viewer=viewer)
        yield "retry: 1000\n\n"
        yield sse("ready", str(follower.last), json.dumps({"resumed": resumed}))
        sent = follower.last
        recheck = GAP_RECHECK[0]
        while True:
            changed.clear()
            changes, held, more = await follower.next_batch(pool)
            for event_id, text in rendered(changes, render, await signer() if changes else None):
                yield text
                sent = event_id
            if follower.last != sent:
                # Other kinds' events (or merged ones) moved the position: an id-only field
                # updates the client's Last-Event-ID without dispatching an event.
                yield f"id: {follower.last}\n\n"
                sent = follower.last
            if more:
                continue
            timeout = recheck if held else heartbeat
            recheck = min(recheck * 2, GAP_RECHECK[1]) if held else GAP_RECHECK[0]
            try:
                await asyncio.wait_for(changed.wait(), timeout)
            except TimeoutError:
                if not held:
                    yield ": keep-alive\n\n"
