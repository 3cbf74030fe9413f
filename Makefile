# Two commands matter: `make demo` (the main job) and `make test` (`make test-fast` while editing).
# Both bootstrap .venv/ idempotently from requirements.lock (torch pinned to the CPU build).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-cloud test test-fast lint bench clean browser

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Azurite, the Azure Blob emulator: only the tests and the cloud demo need Node.
AZURITE := node_modules/.installed
$(AZURITE): package-lock.json
	npm ci --no-audit --no-fund --silent
	@touch $(AZURITE)

# Debian's Chromium for the dashboard's browser test (Playwright drives it; never
# `playwright install`). apt-get runs only when it is missing.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

demo: setup
	$(BIN)/fedaas demo

demo-cloud: setup $(AZURITE)
	$(BIN)/fedaas demo --storage cloud

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

# The full suite in a random order; the seed is printed first, and `make test SEED=N` replays
# that order. CI (.ci/run) runs this target.
test: lint $(AZURITE) browser
	@seed=$${SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	echo "test order: pytest-randomly seed $$seed (replay: make test SEED=$$seed)"; \
	$(BIN)/python -m pytest -q -p randomly --randomly-seed=$$seed

# The fast tier (well under a minute): everything but the multi-process, emulator and big-data tests.
FAST := not slow and not emulator and not bigdata
test-fast: setup
	$(BIN)/python -m pytest -p randomly -m "$(FAST)" -q

bench: setup
	$(BIN)/python bench/bench_rounds.py
	$(BIN)/python bench/bench_memory.py

clean:
	rm -rf $(VENV) runs bench/out node_modules
