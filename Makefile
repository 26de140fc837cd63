# housing-mlops: `make demo` runs the pipeline, `make test` runs the tests.
# Both create .venv and install the package (with the dev extra) when needed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

# Offline route: use the shared copy of the archive when it sits next to the project.
HOUSING_DATA_ARCHIVE ?= $(wildcard $(CURDIR)/../shared/data/cal_housing.tgz)
export HOUSING_DATA_ARCHIVE

.PHONY: install demo test lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	# The Compose Specification schema for tests/test_delivery.py ships in this wheel
	# (downloaded, not installed: its pins clash with ours).
	$(BIN)/python -m pip download -q --no-deps docker-compose==1.29.2 -d $(VENV)/schemas
	touch $(STAMP)

install: $(STAMP)

# fetch -> featurize -> train -> evaluate -> promote -> serve + traffic -> drift -> report
demo: $(STAMP)
	BIN=$(BIN) bash scripts/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff (lint + format check) and mypy
	$(BIN)/ruff check housing_mlops tests
	$(BIN)/ruff format --check housing_mlops tests
	$(BIN)/mypy housing_mlops

format: $(STAMP)
	$(BIN)/ruff format housing_mlops tests
	$(BIN)/ruff check --fix housing_mlops tests

# Drift over 1,000,000 logged requests: wall time and peak RSS of `housing drift --since 7d`
# (targets: <= 5 s, <= 500 MB). BENCH_DRIFT_ARGS="--project-config configs/default.yaml"
# uses the registry's champion (after `make demo`) instead of a built-in reference.
.PHONY: bench-drift
bench-drift: $(STAMP)
	$(BIN)/python benchmarks/bench_drift.py $(BENCH_DRIFT_ARGS)

# `housing serve` vs `mlflow models serve` on the same champion: requests/s, p50, p99 and
# the ratio at 16 connections (wrk when installed). Uses the config's champion when there
# is one (after `make demo`), else a throwaway store; BENCH_SERVE_ARGS="--temp-store".
.PHONY: bench-serve
bench-serve: $(STAMP)
	$(BIN)/python benchmarks/bench_serve.py $(BENCH_SERVE_ARGS)

clean:
	rm -rf data mlruns reports .pytest_cache .ruff_cache
