# music-gen: make setup | demo | test | bench
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED ?= 0
export MLFLOW_DISABLE_TELEMETRY ?= true
export HF_HUB_DISABLE_TELEMETRY ?= 1

.PHONY: setup lock demo test lint unit integration bench clean

setup: $(STAMP)

# Reinstalled only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# Pin the exact set of packages the tests ran with (after changing pyproject's ranges).
lock: setup
	@echo "# Exact versions the test suite runs with (make lock). pyproject.toml holds the ranges." > constraints.txt
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^music-gen' >> constraints.txt

# The whole platform end to end, offline (work/demo); e.g. make demo DEMO_ARGS=--keep-serving
DEMO_ARGS ?=
demo: setup
	$(BIN)/music-gen demo $(DEMO_ARGS)

lint: setup
	$(BIN)/ruff check music_gen tests benchmarks
	$(BIN)/ruff format --check music_gen tests benchmarks
	$(BIN)/mypy

# The unit tier runs in two processes (its tests share nothing); the integration tier in
# one, as its tests share one Ray cluster sized for the machine.
unit: setup
	$(BIN)/pytest -q -n 2 tests/unit

integration: setup
	$(BIN)/pytest -q tests/integration

test: lint
	$(BIN)/pytest -q -n 2 tests/unit
	$(BIN)/pytest -q --durations=20 tests/integration

# Every benchmark in benchmarks/ as one table (some take many minutes); pass flags in
# BENCH, e.g. make bench BENCH="--only generation,engine --quick".
BENCH ?=
bench: setup
	$(BIN)/music-gen bench $(BENCH)

clean:
	rm -rf work build *.egg-info .pytest_cache .ruff_cache
