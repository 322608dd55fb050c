# Two commands for a fresh machine:
#   make run    start the whole service (installs what it needs into .venv first)
#   make test   run the test suite (same install, plus the test tools)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install clean

run: $(VENV)/.installed
	$(BIN)/python -m app run

test: $(VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) .data
