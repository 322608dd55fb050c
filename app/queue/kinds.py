"""What the queue knows of a job, and what a kind of job tells it.

A job is a kind (a name), JSON arguments and the queue's own bookkeeping: attempts, a run time,
a priority, a lease while it runs. What a kind does is its handler's business. A handler takes
the claimed `Job` and says how the attempt ended by returning (done), by returning or raising
`Retry` (try again, after the given delay or the kind's backoff) or `Fail` (never again), or by
raising anything else (a bug or an outage: retried on the kind's backoff, the exception named in
the job's error). `OwnershipLost` ends the attempt quietly: the job is no longer this worker's.

A handler is an `async def` (it runs in a task of its own, under the kind's timeout) or a plain
function, which the worker calls inline between claims: no task, no timeout, for work that
takes microseconds and never blocks.
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol
from uuid import UUID

from app import db


class Status(StrEnum):
    """Where a job is: waiting (pending), running (processing), or finished for good."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELED})
"""A job never leaves these."""


_UNREAD: Any = object()


@dataclass(slots=True)
class Job:
    """A claimed job, as its handler sees it."""

    id: UUID
    kind: str
    args_json: str | None
    """Its arguments as the JSON text they are stored as (None: no arguments); `args` decodes
    them, once, for handlers that read them."""
    attempts: int
    """Claims so far, this one included: 1 on the first run."""
    max_attempts: int
    run_at: datetime
    """When it fell due (its insert, a retry's time, a hand-back)."""
    started_at: datetime
    created_at: datetime
    worker_id: str
    _args: Any = field(default=_UNREAD, repr=False, compare=False)

    @property
    def args(self) -> Any:
        """The JSON arguments it was enqueued with (None for kinds that keep theirs elsewhere)."""
        if self._args is _UNREAD:
            self._args = None if self.args_json is None else json.loads(self.args_json)
        return self._args


class Outcome(Exception):
    """How an attempt ended, when it did not simply succeed; raise or return one."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Retry(Outcome):
    """Try the job again: after `after` seconds when given, else after the kind's backoff, and
    in either case not before `at_least` seconds (a provider's Retry-After, honoured when it is
    longer). Once the job has used all its attempts it fails with `reason`."""

    def __init__(self, reason: str, *, after: float | None = None, at_least: float | None = None) -> None:
        super().__init__(reason)
        self.after = after
        self.at_least = at_least


class Fail(Outcome):
    """The job fails for good with `reason`, whatever attempts it has left."""


class OwnershipLost(Exception):
    """The worker no longer owns the job (canceled, reclaimed): drop it, write nothing."""


Handler = Callable[[Job], Awaitable[Outcome | None] | Outcome | None]

AfterCommit = Callable[[], Awaitable[object]]

Forget = Callable[[db.Connection, list[UUID]], Awaitable[AfterCommit | None]]
"""Deletes what a kind keeps of jobs retention deletes, in retention's transaction; it may
return what to do once that commits (delete files kept outside the database, say)."""


class Backoff(Protocol):
    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        ...


@dataclass(frozen=True)
class Exponential:
    """`base` doubled per failed attempt up to `cap`, then scaled by a random half to whole, so
    that jobs failing together do not come back together."""

    base: float = 1.0
    cap: float = 60.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0.5, 1.0) * min(self.cap, self.base * 2.0 ** (attempt - 1))


@dataclass(frozen=True)
class Schedule:
    """A fixed list of delays: the first after attempt 1, and so on; the last one repeats."""

    delays: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.delays or any(delay < 0 for delay in self.delays):
            raise ValueError("a schedule needs at least one delay, none negative")

    def delay(self, attempt: int) -> float:
        return self.delays[min(attempt, len(self.delays)) - 1]


@dataclass(frozen=True)
class Kind:
    """One kind of job and how workers run it: a handler and its share of a worker."""

    name: str
    handler: Handler
    slots: int = 4
    """Jobs of this kind one worker runs at once; no other kind can take them."""
    timeout: float = 300.0
    """Seconds one attempt of an async handler may run before it counts as a failure."""
    max_attempts: int = 3
    """Attempts a job of this kind gets (written on the job when it is enqueued)."""
    backoff: Backoff = field(default_factory=Exponential)
    watched: bool = False
    """Its jobs' changes are recorded in job_events and announced to event streams."""
    forget: Forget | None = None
    """What the kind deletes of its own when retention deletes its finished jobs (called with
    their ids, in the same transaction, and what it returns run after the commit); None when
    it keeps nothing outside the queue."""


def backoff_from(spec: tuple[Any, ...]) -> Backoff:
    """A Backoff from a parsed setting: ("exponential", base, cap) or ("schedule", delays)."""
    if spec[0] == "exponential":
        return Exponential(base=spec[1], cap=spec[2])
    return Schedule(tuple(spec[1]))


def configured(kind: Kind, settings: Any) -> Kind:
    """`kind` with what its settings (app.settings.KindSettings) set, the rest left as is."""
    return replace(
        kind,
        slots=settings.slots or kind.slots,
        max_attempts=settings.max_attempts or kind.max_attempts,
        timeout=settings.timeout or kind.timeout,
        backoff=kind.backoff if settings.backoff is None else backoff_from(settings.backoff),
    )
