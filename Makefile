# shoprec: `make demo` and `make test` work on a fresh machine with Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export SHOPREC_SHARED_DIR ?= $(abspath $(CURDIR)/../shared)
export PYTHONDONTWRITEBYTECODE := 1
# GBDT libraries spin-wait for work by default, which starves the other core on a 2-core machine
export OMP_WAIT_POLICY := PASSIVE
export TF_CPP_MIN_LOG_LEVEL := 2
export GX_ANALYTICS_ENABLED := False
export PREFECT_SERVER_ANALYTICS_ENABLED := false

# DATA=synthetic (default, embedded) or DATA=beauty (real Amazon Beauty from ../shared, tracked by DVC)
DATA ?= synthetic
# The demo trains the deep models for fewer epochs (what 20 s / 10 s reached on the demo data) so that it takes
# about a minute, the same on any machine; dvc repro uses params.yaml as is.
DEMO_SET := --set train.sasrec.max_epochs=9 --set train.lightgcn.max_epochs=15 \
            --set train.ranker_params.deep.max_epochs=10
BEAUTY := seqfile:data/raw/amazon-beauty/Beauty.txt,attributes=data/raw/amazon-beauty/Beauty_item2attributes.json

# `make` alone sets up the virtual environment
.DEFAULT_GOAL := setup

# System packages the tests need (redis-server, chromium), installed with apt-get when missing.
sysdeps:
	@bash infra/system-deps.sh

.PHONY: sysdeps setup demo test lint repro train-flow prefect-server prefect-deploy prefect-worker prefect-run lock clean

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/dvc config --local core.analytics false >/dev/null 2>&1 || true
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
ifeq ($(DATA),beauty)
	$(BIN)/dvc update -q data/raw/amazon-beauty.dvc
	$(BIN)/shoprec pipeline --source "$(BEAUTY)" --root outputs/beauty
	$(BIN)/shoprec batch-recommend --root outputs/beauty
else
	$(BIN)/shoprec pipeline $(DEMO_SET)
	$(BIN)/shoprec batch-recommend
endif

test: setup sysdeps
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .

repro: setup
	$(BIN)/dvc repro

# The Prefect training flow in ephemeral mode (no server): stages as tasks, then MLflow registration and the gate.
train-flow: setup
	$(BIN)/python -m flows.training

# A local Prefect server (UI and API on loopback only).
prefect-server: setup
	$(BIN)/prefect server start --host 127.0.0.1

# Register the deployments of prefect.yaml (training/nightly, batch-recommendations/nightly, data-quality/on-drop)
# and their process work pool against the server; run from the project root, which becomes the runs' directory.
# Only the prefect-* targets talk to the server; tests and train-flow use Prefect's ephemeral mode.
PREFECT_URL ?= http://127.0.0.1:4200/api
POOL := shoprec
prefect-deploy: setup
	PREFECT_API_URL=$(PREFECT_URL) $(BIN)/prefect --no-prompt work-pool create $(POOL) --type process --overwrite
	PREFECT_API_URL=$(PREFECT_URL) $(BIN)/prefect --no-prompt deploy --all

# A worker that runs the pool's flow runs as subprocesses of this machine.
prefect-worker: setup
	PREFECT_API_URL=$(PREFECT_URL) $(BIN)/prefect worker start --pool $(POOL) --type process

# Trigger one nightly training now and wait for its result.
prefect-run: setup
	PREFECT_API_URL=$(PREFECT_URL) $(BIN)/prefect deployment run training/nightly --watch --watch-timeout 1800

# Re-resolve the pinned set after changing pyproject.toml ranges.
lock: setup
	$(BIN)/python infra/write_lock.py requirements.lock

clean:
	rm -rf data models metrics reports outputs

# Scale benchmark (issue 7): EVENTS synthetic Taobao-like events through ingest -> evaluate, wall time and peak
# memory per stage; updates docs/scale-benchmark.json and the scale section of docs/BENCHMARKS.md.
EVENTS ?= 10000000
.PHONY: bench-scale
bench-scale: setup
	$(BIN)/python -m benchmarks.scale --events $(EVENTS) --out outputs/bench-scale-$(EVENTS)

# The business dashboard (issue 6) on http://127.0.0.1:$(DASHBOARD_PORT), reading the demo's outputs
# (the project root for DATA=synthetic, outputs/beauty for DATA=beauty); Ctrl-C stops it.
DASHBOARD_PORT ?= 8501
.PHONY: dashboard
dashboard: setup
	$(BIN)/shoprec dashboard --root $(if $(filter beauty,$(DATA)),outputs/beauty,.) --port $(DASHBOARD_PORT)

# The recommendation API on loopback (settings from SHOPREC_*, see docs/serving.md); Ctrl-C stops it.
SERVE_PORT ?= 8000
.PHONY: serve
serve: setup
	$(BIN)/shoprec serve --host 127.0.0.1 --port $(SERVE_PORT) --root .

# Vector index benchmark (issue 14): ITEMS synthetic clustered item vectors in the IVF index of
# pipelines/models/vector_index.py; build time, memory, single-query latency and recall@100 against exact search.
ITEMS ?= 1000000
.PHONY: bench-ann
bench-ann: setup
	$(BIN)/python -m benchmarks.ann --items $(ITEMS) --doc docs/BENCHMARKS.md

# Generated sequence file (issue 16) at the size of a data set we benchmark on but do not have (~35,600 users with
# 3+ items, ~18,400 items, ~300,000 interactions, Amazon Beauty format), then `shoprec benchmark` on it.
.PHONY: bench-seqfile
bench-seqfile: setup
	$(BIN)/shoprec generate --out outputs/seqfile-data --users 45500 --items 22000 --events-per-user 9 \
		--sequences outputs/seqfile.txt
	$(BIN)/shoprec benchmark --dataset seqfile:outputs/seqfile.txt,attributes=outputs/seqfile_item2attributes.json \
		--out outputs/bench-seqfile

# Reproducibility (issue 16): the Beauty benchmark on an idle machine and beside a job spinning on one core; test
# metrics, wall time, peak memory and how each fit stopped; writes docs/BENCHMARKS.md (reproducibility section).
.PHONY: bench-repro
bench-repro: setup
	$(BIN)/python -m benchmarks.reproducibility --out outputs/bench-repro --doc docs/BENCHMARKS.md

# Online experiments (issue 15): simulated shoppers drive the API with a random, a better and an identical
# challenger over repeated seeds; writes docs/BENCHMARKS.md (online experiments section).
.PHONY: bench-experiments
bench-experiments: setup  ## closed-loop online experiments over repeated seeds (writes docs/BENCHMARKS.md)
	$(BIN)/python -m benchmarks.experiments --root outputs/bench-experiments --doc docs/BENCHMARKS.md

# API benchmark on a trained project (BENCH_ROOT, e.g. after `make demo`): precomputes the lists, serves them from a
# subprocess, loads it from another process; writes the results into docs/BENCHMARKS.md (API latency).
BENCH_ROOT ?= .
.PHONY: bench-api
bench-api: setup
	$(BIN)/shoprec batch-recommend --root $(BENCH_ROOT)
	$(BIN)/python -m benchmarks.api_load --root $(BENCH_ROOT) --doc docs/BENCHMARKS.md

# Serving a large catalogue (issue 14): trains a model whose catalogue is CATALOGUE_ITEMS items (a smaller Taobao-like
# log, the scale profile), then the API benchmark on it at 50 req/s; writes docs/BENCHMARKS.md (catalogue section).
CATALOGUE_ITEMS ?= 4000000
.PHONY: bench-catalogue
bench-catalogue: setup
	$(BIN)/python -m benchmarks.catalogue --items $(CATALOGUE_ITEMS) --out outputs/bench-catalogue-$(CATALOGUE_ITEMS) \
		--doc docs/BENCHMARKS.md
