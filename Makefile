# Tailor — every command sets up what it needs first (virtual env, packages, generated code).
# Needs only Python 3.11 and make: uv is installed into tools/ when it is not on the PATH.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo tools/uv/bin/uv)
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)

.PHONY: help setup proto run test lint format bench helm helm-render image clean

# A bare `make` lists the targets (it used to build tools/uv/bin/uv, the first rule in the file).
.DEFAULT_GOAL := help

help:  ## this list of targets
	@awk -F ':.*## ' '/^[a-zA-Z_-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(firstword $(MAKEFILE_LIST))

tools/uv/bin/uv:
	$(PYTHON) -m venv tools/uv
	tools/uv/bin/pip install --quiet --disable-pip-version-check uv

$(BIN)/python: uv.lock pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml) | $(UV)
	$(UV) sync --all-packages --frozen
	@touch $(BIN)/python

libs/proto/src/tailor/__init__.py: $(BIN)/python $(shell find protos -name '*.proto') libs/proto/generate.py
	$(BIN)/python libs/proto/generate.py

setup: $(BIN)/python libs/proto/src/tailor/__init__.py  ## virtual env, packages, generated code (idempotent)

proto: $(BIN)/python  ## regenerate Python code from protos/
	$(BIN)/python libs/proto/generate.py

DEMO_PEOPLE ?= 1000
run: setup  ## the whole platform with a demo population (DEMO_PEOPLE=0 skips it); Ctrl-C stops
	$(BIN)/tailor up --demo-people $(DEMO_PEOPLE) $(ARGS)

test: setup  ## every test: unit, integration (real PostgreSQL and NATS), end to end, chart
	$(BIN)/pytest $(ARGS)

lint: setup helm  ## ruff, mypy, buf, helm
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy libs/platform libs/cli services tests bench
	cd protos && ../$(BIN)/buf lint
	tools/bin/helm lint deploy/helm/tailor --strict

format: setup  ## ruff: fix what it can and format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup  ## all benchmarks; figures to bench/results.json and bench/RESULTS.md
	$(BIN)/python -m bench all

bench-%: setup
	$(BIN)/python -m bench $*

helm: tools/bin/helm  ## a pinned helm binary in tools/bin (for chart tests and lint)

tools/bin/helm:
	deploy/helm/install-helm.sh

helm-render: helm  ## re-render the chart examples after a chart change (reviewed in diffs)
	deploy/helm/render-examples.sh

SERVICE ?= consent
image:  ## container image of one service: make image SERVICE=consent (needs a Docker engine)
	docker build -f docker/Dockerfile --build-arg SERVICE=$(SERVICE) -t tailor-$(SERVICE) .

clean:  ## remove the virtual env, generated code, tools/ and caches
	rm -rf $(VENV) libs/proto/src tools .mypy_cache .ruff_cache .pytest_cache
