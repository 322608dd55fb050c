"""A real worker process running only the test kinds of tests/chores.py through the project's
own worker process (app.queue.process.serve: worker loop, maintenance, signals). At exit it
writes the names of the app modules it imported to CHORE_WORKER_MODULES, so a test can show
that the queue runs with no image or HTTP code loaded."""

import json
import os
import sys

import chores  # tests/ is this script's folder, first on sys.path
import uvloop

from app import db, settings
from app.process import prepare
from app.queue.kinds import configured
from app.queue.process import serve


async def main(config: settings.Settings) -> None:
    pool = await db.create_pool(config.database, size=8, application_name=db.WORKER_APPLICATION)
    try:
        kinds = [configured(kind, config.kind(kind.name)) for kind in (chores.KIND, chores.TICK)]
        await serve(config, pool=pool, registry=kinds)
    finally:
        await pool.close()


if __name__ == "__main__":
    uvloop.run(main(prepare(settings.load())))
    with open(os.environ["CHORE_WORKER_MODULES"], "w") as out:
        json.dump(sorted(name for name in sys.modules if name == "app" or name.startswith("app.")), out)
