# music-gen: make setup | demo | test | bench
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED ?= 0
export MLFLOW_DISABLE_TELEMETRY ?= true
export HF_HUB_DISABLE_TELEMETRY ?= 1

.PHONY: setup demo test lint unit integration bench clean

setup: $(STAMP)

# Reinstalled only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(BIN)/music-gen demo

lint: setup
	$(BIN)/ruff check music_gen tests benchmarks
	$(BIN)/ruff format --check music_gen tests benchmarks

unit: setup
	$(BIN)/pytest -q -m "not integration" tests/unit

integration: setup
	$(BIN)/pytest -q tests/integration

test: lint
	$(BIN)/pytest -q tests

bench: setup
	$(BIN)/python benchmarks/generation.py
	@for b in tokenize train; do test -f benchmarks/$$b.py && $(BIN)/python benchmarks/$$b.py || true; done

clean:
	rm -rf work build *.egg-info .pytest_cache .ruff_cache
