"""Serve the menagerie HTTP API: `python server.py`."""

import uvicorn

from app import settings
from app.api import create_app
from app.process import prepare

if __name__ == "__main__":
    config = prepare(settings.load())
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=10,
    )
