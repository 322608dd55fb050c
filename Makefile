# Two commands for a fresh machine:
#   make run    start the whole service (installs what it needs into .venv first)
#   make test   run the test suite (same install, plus the test tools)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint install lock clean

run: $(VENV)/.installed
	$(BIN)/python -m app run

test: $(VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff (lint and format) and mypy --strict on app/: what .ci/run and the pre-commit hooks run.
lint: $(VENV)/.linters
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

install: $(VENV)/.installed

# Refresh requirements.lock (what the Docker image installs) from pyproject.toml.
lock: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-find-links --output-file requirements.lock pyproject.toml

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,test]'
	touch $@

$(VENV)/.linters: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[embedded,test,lint]'
	touch $@

clean:
	rm -rf $(VENV) .data
