"""The general queue: jobs of any kind in PostgreSQL, claimed with SKIP LOCKED, run by workers
that LISTEN. Imports nothing of images, generations or HTTP; what a kind does is its handler.

- `kinds`: Job, Kind, the outcomes a handler reports (Retry, Fail), backoffs.
- `jobs`: one function per statement of sql/queue.sql (enqueue, claim, complete, ...).
- `worker`: the loop. `maintenance`: housekeeping rounds. `process`: one worker process.
"""

from app.queue.jobs import NewJob, enqueue
from app.queue.kinds import Exponential, Fail, Job, Kind, OwnershipLost, Retry, Schedule

__all__ = ["Exponential", "Fail", "Job", "Kind", "NewJob", "OwnershipLost", "Retry", "Schedule", "enqueue"]
