"""Process menagerie jobs until SIGTERM or Ctrl-C: `python worker.py` (the same as
`menagerie worker`)."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main(["worker"]))
