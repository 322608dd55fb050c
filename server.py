"""Serve the menagerie HTTP API: `python server.py` (the same as `menagerie server`)."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main(["server"]))
