"""Process menagerie jobs until SIGTERM or Ctrl-C: `python worker.py`."""

import uvloop

from app import settings
from app.process import prepare
from app.worker import serve

if __name__ == "__main__":
    uvloop.run(serve(prepare(settings.load())))
