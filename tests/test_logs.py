"""Log formats: LOG_FORMAT=json writes one JSON object per line, text stays readable."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest

from app import logs
from app.settings import Settings

log = logging.getLogger("menagerie.test")


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """`configure` replaces the root logger's handlers; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_json_format_writes_one_object_per_record_with_action_and_job_id(capsys):
    """Each record is one line of JSON with time (UTC), level, logger, message, and the
    record's action and job_id; a record without an action gets its logger's name as one;
    other fields the record lacks are left out."""
    logs.configure("INFO", "json")
    log.info("claimed job %s", "j-1", extra={"action": "job_claimed", "job_id": "j-1"})
    log.warning("plain")

    first, second = json_lines(capsys.readouterr().err)
    assert first == {
        "time": first["time"],
        "level": "INFO",
        "logger": "menagerie.test",
        "message": "claimed job j-1",
        "action": "job_claimed",
        "job_id": "j-1",
    }
    assert datetime.fromisoformat(first["time"]).utcoffset().total_seconds() == 0
    assert set(second) == {"time", "level", "logger", "message", "action"}
    assert second["action"] == "menagerie.test"


def test_json_format_keeps_an_exception_on_its_one_line(capsys):
    """A logged exception's traceback travels inside the record's single JSON line."""
    logs.configure("INFO", "json")
    try:
        raise RuntimeError("the model is on fire")
    except RuntimeError:
        log.exception("crashed", extra={"action": "job_crashed", "worker_id": "w-1"})

    (record,) = json_lines(capsys.readouterr().err)
    assert (record["action"], record["worker_id"]) == ("job_crashed", "w-1")
    assert "RuntimeError: the model is on fire" in record["exception"]


def test_text_format_shows_the_action(capsys):
    """The default text format keeps its human line and appends `action=` and `job_id=`."""
    logs.configure("INFO")
    log.info("completed job j-1", extra={"action": "job_completed", "job_id": "j-1"})

    line = capsys.readouterr().err.strip()
    assert line.endswith("INFO menagerie.test: completed job j-1 [action=job_completed job_id=j-1]")


def test_log_format_setting_accepts_either_case_and_refuses_others():
    """LOG_FORMAT is text or json, in any case; anything else is a bad setting."""
    assert Settings(_env_file=None, log_format="JSON").log_format == "json"
    with pytest.raises(ValueError):
        Settings(_env_file=None, log_format="xml")


async def test_records_logged_inside_a_worker_carry_its_id(capsys):
    """Everything a worker's loop and its job tasks log carries that worker's id."""
    import asyncio

    logs.configure("INFO", "json")

    async def worker_loop() -> None:
        logs.worker_id.set("host-1-abcd")
        await asyncio.create_task(job_task())

    async def job_task() -> None:
        log.info("completed job j-9", extra={"action": "job_completed", "job_id": "j-9"})

    await worker_loop()
    (record,) = json_lines(capsys.readouterr().err)
    assert (record["worker_id"], record["job_id"]) == ("host-1-abcd", "j-9")
