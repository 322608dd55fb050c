"""Settings: read once from the environment and `.env`, validated, frozen."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app import settings as settings_module
from app.settings import Settings


def test_an_asyncpg_style_url_is_accepted_as_plain_postgresql():
    """`postgresql+asyncpg://` (the original system's spelling) means `postgresql://`."""
    config = Settings(_env_file=None, database_url="postgresql+asyncpg://u:p@db:5432/app")
    assert config.database_url == "postgresql://u:p@db:5432/app"


def test_settings_come_from_a_dotenv_file_and_the_environment_wins(tmp_path, monkeypatch):
    """Values in `.env` are read; a variable set in the environment overrides the file."""
    (tmp_path / ".env").write_text("MAX_IMAGES_PER_JOB=7\nWORKER_CONCURRENCY=9\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORKER_CONCURRENCY", "2")
    config = Settings()
    assert (config.max_images_per_job, config.worker_concurrency) == (7, 2)


def test_settings_are_frozen():
    """Settings cannot be changed after they are read."""
    config = Settings(_env_file=None)
    with pytest.raises(ValidationError):
        config.port = 1  # type: ignore[misc]


def test_a_bad_value_exits_2_with_one_line_naming_the_variable(monkeypatch, capsys):
    """`load()` turns the first invalid variable into one line on stderr and exit code 2."""
    monkeypatch.setenv("LEASE_SECONDS", "-1")
    with pytest.raises(SystemExit) as exit_info:
        settings_module.load(_env_file=None)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("menagerie: bad setting LEASE_SECONDS='-1'")
