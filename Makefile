# Everyday targets. Each installs first (quick when already installed).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install serve test test-fast lint fmt clean

install:
	bash scripts/install.sh

serve: install
	$(PY) -m service

test: install
	$(PY) -m pytest

test-fast: install  ## everything except real server processes and long audio
	$(PY) -m pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check service tests
	$(VENV)/bin/ruff format --check service tests
	$(VENV)/bin/mypy

fmt: install
	$(VENV)/bin/ruff format service tests
	$(VENV)/bin/ruff check --fix service tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
