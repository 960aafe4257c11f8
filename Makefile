# Everyday targets. Each installs first (quick when already installed).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install serve test test-fast lint fmt clean bench

install:
	bash scripts/install.sh

serve: install
	$(PY) -m service

test: install
	$(PY) -m pytest

test-fast: install  ## everything except real server processes and long audio
	$(PY) -m pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check service clients/python scripts tests
	$(VENV)/bin/ruff format --check service clients/python scripts tests
	$(VENV)/bin/mypy

bench: install  ## the full benchmark (tens of minutes on 2 cores); run it on a quiet machine
	$(PY) scripts/bench.py --json bench-results.json --markdown bench-results.md

fmt: install
	$(VENV)/bin/ruff format service clients/python scripts tests
	$(VENV)/bin/ruff check --fix service clients/python scripts tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
