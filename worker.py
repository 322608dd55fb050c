"""Process menagerie jobs until SIGTERM or Ctrl-C: `python worker.py`."""

import uvloop

from app import db, registry, settings
from app.process import prepare
from app.queue.process import serve


async def main(config: settings.Settings) -> None:
    assert config.database_url is not None
    pool = await db.create_pool(
        config.database_url, size=registry.pool_size(config), application_name=db.WORKER_APPLICATION
    )
    try:
        await serve(config, pool=pool, registry=registry.kinds(config, pool), rounds=registry.rounds(config, pool))
    finally:
        await pool.close()


if __name__ == "__main__":
    config = prepare(settings.load())
    try:
        uvloop.run(main(config))
    except settings.SettingError as exc:
        settings.stop(str(exc))
