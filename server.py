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
        backlog=2048,
        timeout_keep_alive=5,  # idle keep-alive connections close after 5 s
        timeout_graceful_shutdown=10,  # then open event streams are cut on shutdown
    )
