# One-command setup and run. Every install is skipped when already done (stamp files).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOTSTRAP ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
TOOLS := .tools
FERRETDB_VERSION := v1.24.2
UV_VERSION := 0.13.9
PACKAGES := pipeline-common ops data-fetch ml-pipeline model-serving
PACKAGE_FILES := $(foreach p,$(PACKAGES),$(p)/pyproject.toml)

export PYSPARK_PYTHON := $(abspath $(PY))
export SPARK_LOCAL_IP := 127.0.0.1

.PHONY: help setup up down status run test lint format clean bench-preprocess

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(VENV)/.installed $(TOOLS)/bin/ferretdb $(TOOLS)/jars/.fetched ## install everything the project needs

$(VENV)/.installed: requirements/dev.txt $(PACKAGE_FILES)
	test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(UV) pip install --quiet --python $(PY) -r requirements/dev.txt
	$(UV) pip install --quiet --python $(PY) --no-deps $(foreach p,$(PACKAGES),-e $(p))
	touch $@

$(TOOLS)/bin/ferretdb: ops/scripts/build-ferretdb.sh
	mkdir -p $(TOOLS)/bin
	ops/scripts/build-ferretdb.sh $(FERRETDB_VERSION) $@

$(TOOLS)/jars/.fetched: ops/jars/pom.xml
	rm -rf $(TOOLS)/jars && mkdir -p $(TOOLS)/jars
	mvn -q -B -Dstyle.color=never -f ops/jars/pom.xml dependency:copy-dependencies -DoutputDirectory=$(abspath $(TOOLS)/jars) -DincludeScope=runtime
	touch $@

up: setup ## start the local platform (Vault, MongoDB, MLflow) and configure Vault
	$(PY) -m pipeline_ops up

down: ## stop the local platform
	@test -x $(PY) && $(PY) -m pipeline_ops down || true

status: ## show what runs where
	$(PY) -m pipeline_ops status

run: setup ## set up, start the platform and run the whole pipeline on the bundled sample
	$(PY) -m pipeline_ops run

lint: setup ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint ## lint, then the whole test suite against real local servers
	$(PY) -m pytest

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean: down ## remove local state (keeps installs)
	rm -rf .local

bench-preprocess: setup ## spark-preprocess rows/s vs single-process pandas: real sample, 100k (1M extrapolated)
	timeout 1800 $(PY) ml-pipeline/bench/bench_preprocess.py
