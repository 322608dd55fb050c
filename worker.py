"""Process menagerie jobs until SIGTERM or Ctrl-C: `python worker.py`."""

import asyncio

import uvloop

from app import settings
from app.process import prepare
from app.worker import serve

if __name__ == "__main__":
    config = prepare(settings.load())
    asyncio.run(serve(config), loop_factory=uvloop.new_event_loop)
