# Two commands matter: `make demo` (the main job) and `make test` (`make test-fast` while editing).
# Both bootstrap .venv/ idempotently from requirements.lock (torch pinned to the CPU build).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml package-lock.json
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	npm ci --no-audit --no-fund --silent  # Azurite, the Azure Blob emulator (tests, cloud demo)
	@touch $(STAMP)

demo: setup
	$(BIN)/fedaas demo

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

# The full suite in a random order (pytest-randomly prints the seed; replay a failing order with
# `pytest -p randomly --randomly-seed=N`). CI (.ci/run) runs this target.
test: lint
	$(BIN)/python -m pytest -q -p randomly

# The fast tier (well under a minute): everything but the multi-process, emulator and big-data tests.
FAST := not slow and not emulator and not bigdata
test-fast: setup
	$(BIN)/python -m pytest -q -p randomly -m "$(FAST)"

bench: setup
	$(BIN)/python bench/bench_rounds.py
	$(BIN)/python bench/bench_memory.py

clean:
	rm -rf $(VENV) runs bench/out node_modules
