# housing-mlops: `make demo` runs the pipeline, `make test` runs the tests.
# Both create .venv and install the package (with the dev extra) when needed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Extras installed into .venv: `make install EXTRAS=dev,spark` adds pyspark for
# `housing predict --engine spark` (what .ci/run does). One stamp per set of extras.
EXTRAS ?= dev
comma  := ,
STAMP  := $(VENV)/.installed-stamp-$(subst $(comma),-,$(EXTRAS))
PYTEST_ARGS ?=

# Offline route: use the shared copy of the archive when it sits next to the project.
HOUSING_DATA_ARCHIVE ?= $(wildcard $(CURDIR)/../shared/data/cal_housing.tgz)
export HOUSING_DATA_ARCHIVE

# Versions the tests ran against (make lock refreshes it); pyproject.toml keeps the ranges a
# plain `pip install housing-mlops` resolves on its own.
LOCK := requirements.lock

.PHONY: install demo test lint format clean lock mutation

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[$(EXTRAS)]'
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

# ruff (lint + format check of the package, tests, benchmarks and scripts), mypy (package
# and tests), the architecture contracts of pyproject.toml (layers, one owner per outside
# system) and dead code (vulture).
lint: $(STAMP)
	$(BIN)/ruff check housing_mlops tests benchmarks scripts
	$(BIN)/ruff format --check housing_mlops tests benchmarks scripts
	$(BIN)/mypy housing_mlops tests
	$(BIN)/lint-imports --no-cache
	$(BIN)/vulture

format: $(STAMP)
	$(BIN)/ruff format housing_mlops tests benchmarks scripts
	$(BIN)/ruff check --fix housing_mlops tests benchmarks scripts

# Drift over 1,000,000 logged requests: wall time and peak RSS of `housing drift --since 7d`
# (targets: <= 5 s, <= 500 MB). BENCH_DRIFT_ARGS="--project-config configs/default.yaml"
# uses the registry's champion (after `make demo`) instead of a built-in reference.
.PHONY: bench-drift
bench-drift: $(STAMP)
	$(BIN)/python benchmarks/bench_drift.py $(BENCH_DRIFT_ARGS)

# The same over 10,000,000 rows in PostgreSQL (targets: <= 10 s, <= 300 MB client RSS): a
# throwaway cluster started with initdb/pg_ctl (apt-get install postgresql), loaded with
# COPY (~3.7 GB, 2-3 min); BENCH_DRIFT_PG_ARGS="--pg-url postgresql://..." for a server of
# your own (an empty database), "--rows N" for another size.
.PHONY: bench-drift-pg
bench-drift-pg: $(STAMP)
	$(BIN)/python benchmarks/bench_drift.py --backend postgresql $(BENCH_DRIFT_PG_ARGS)

# The ceiling (a constant-answer ASGI app on the same uvicorn) vs `housing serve` vs `mlflow
# models serve` on the same champion: requests/s, p50, p99, CPU per request and the ratios at
# 16 connections (wrk when installed; last line `bench-serve: key=value ...`); and side by side `housing serve` with
# its SQLite log vs a PostgreSQL log (a throwaway cluster via initdb/pg_ctl, or
# BENCH_SERVE_ARGS="--pg-url URL"), with the ratio (target >= 90%). Uses the config's
# champion when there is one (after `make demo`), else a throwaway store;
# BENCH_SERVE_ARGS="--temp-store". BENCH_SERVE_ARGS="--only floor": the ceiling, housing serve,
# and housing serve with its model answering 0, then also without request log and metrics.
.PHONY: bench-serve
bench-serve: $(STAMP)
	$(BIN)/python benchmarks/bench_serve.py $(BENCH_SERVE_ARGS)

# Ground truth in bulk: 100,000 labels through store.apply_feedback and `housing feedback
# FILE`, then `housing evaluate --live` on them, on SQLite and PostgreSQL (a throwaway
# cluster, or BENCH_FEEDBACK_ARGS="--pg-url URL"; "--no-pg", "--rows N").
.PHONY: bench-feedback
bench-feedback: $(STAMP)
	$(BIN)/python benchmarks/bench_feedback.py $(BENCH_FEEDBACK_ARGS)
# What a challenger in shadow costs: `housing serve --challenger-mode off` vs `shadow` on the
# same champion and challenger, the same wrk load (16 connections, single-row POST),
# interleaved over BENCH_SHADOW_ARGS="--rounds 3 --duration 10"; prints req/s and p99 of
# each and the ratios (targets: req/s >= 70%, p99 <= 1.2x of shadow off).
.PHONY: bench-shadow
bench-shadow: $(STAMP)
	$(BIN)/python benchmarks/bench_shadow.py $(BENCH_SHADOW_ARGS)

# `housing predict` on 1,000,000 rows (the test split resampled): the local engine's rows/s
# and peak RSS (targets >= 100,000 rows/s, <= 1 GB) vs mlflow.pyfunc's predict on the same
# file, and the Spark engine vs mlflow.pyfunc.spark_udf on local[2] (needs the spark extra:
# make bench-predict EXTRAS=dev,spark). Same champion choice as bench-serve.
.PHONY: bench-predict
bench-predict: $(STAMP)
	$(BIN)/python benchmarks/bench_predict.py $(BENCH_PREDICT_ARGS)

# `housing train` with the default config in a throwaway folder: wall and CPU seconds, CV and
# holdout RMSE per candidate, the per-row predict cost of each (as `housing serve` serves it:
# fast path, a LightGBM model's trees compiled; and pipeline.predict), and a last
# `bench-train: key=value ...` line. BENCH_TRAIN_ARGS="--config other.yaml --json".
.PHONY: bench-train
bench-train: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py $(BENCH_TRAIN_ARGS)

# The champion-vs-challenger readers over 1,000,000 logged requests with 20 % labelled
# (SQLite; BENCH_LIVE_ARGS="--pg-url postgresql://..." for an empty PostgreSQL database):
# the live-quality gauges' refresh, role_stats, labelled_rows and the report section.
.PHONY: bench-live
bench-live: $(STAMP)
	$(BIN)/python benchmarks/bench_live.py $(BENCH_LIVE_ARGS)

# Pin every dependency (the dev and spark extras included), for every platform, from Python 3.11 up.
# Run after changing dependencies in pyproject.toml and commit the result; `make install`
# then reinstalls with it. --upgrade moves every pin to the newest allowed release.
LOCK_ARGS ?=
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra spark --universal --python-version 3.11 \
		--no-header --quiet $(LOCK_ARGS) -o $(LOCK)

# How much the tests pin down: flip one operator at a time in a module, run its tests, count
# the mutants they kill. Not part of `make test` (minutes). By default the gate rules of
# promote.py; other modules, e.g. the drift statistics or the request schemas:
#   make mutation MUTATE=housing_mlops/drift/statistics.py MUTATION_TESTS=tests/test_drift.py \
#     MUTATION_ARGS=
#   make mutation MUTATE=housing_mlops/serving/schemas.py \
#     MUTATION_TESTS=tests/test_serving_schemas.py MUTATION_ARGS=
MUTATE ?= housing_mlops/promote.py
MUTATION_TESTS ?= tests/test_promote.py
MUTATION_ARGS ?= --functions should_promote,_get,_evaluated,_best
mutation: $(STAMP)
	$(BIN)/python scripts/mutation.py $(MUTATE) $(MUTATION_TESTS) $(MUTATION_ARGS)

# The app image with podman where there is no Docker engine and no registry (README, "With
# podman, without a registry"): the base from scripts/container-base.sh (the pinned
# python:3.11-slim, or a Debian stand-in made once per machine), then the Dockerfile.
IMAGE ?= housing-mlops:local
.PHONY: image
image: export CONTAINERS_CONF ?= $(CURDIR)/deploy/podman/containers.conf
image:
	base="$$(bash scripts/container-base.sh)" && podman build --format docker --network host \
		--pull=never --build-arg PYTHON_IMAGE="$$base" --tag $(IMAGE) .
	podman image inspect --format '{{.Size}}' $(IMAGE) | awk '{printf "%s: %.2f GB\n", "$(IMAGE)", $$1/1e9}'

clean:
	rm -rf data mlruns reports .pytest_cache .ruff_cache
