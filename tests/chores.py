"""A second kind of job, made for the tests: all that adding a kind takes is this file, a
handler and a `Kind`, registered where the worker is built (tests/chore_worker.py).

A chore's args say what each attempt does: {"plan": ["retry", "ok"]} retries once, then
succeeds. Steps: ok, fail, crash, retry, retry-after:<seconds>, sleep:<seconds>, hang.
"""

from __future__ import annotations

import asyncio

from app.queue import Fail, Job, Kind, Retry, Schedule


async def chore(job: Job) -> None:
    plan: list[str] = job.args["plan"]
    step = plan[min(job.attempts, len(plan)) - 1]
    name, _, value = step.partition(":")
    if name == "ok":
        return
    if name == "sleep":
        await asyncio.sleep(float(value))
        return
    if name == "hang":
        await asyncio.sleep(3600)
    if name == "retry":
        raise Retry(f"asked to retry on attempt {job.attempts}")
    if name == "retry-after":
        raise Retry("asked to wait", after=float(value))
    if name == "fail":
        raise Fail("failed as planned")
    if name == "crash":
        raise RuntimeError("crashed as planned")
    raise Fail(f"unknown step {step!r}")


def tick(job: Job) -> None:
    """A plain-function handler: the worker calls it inline, no task."""
    if job.args and job.args.get("fail"):
        raise Fail("tick failed as planned")


KIND = Kind("chore", chore, slots=2, timeout=1.0, max_attempts=3, backoff=Schedule((0.05, 0.1)))
TICK = Kind("tick", tick, slots=50)
