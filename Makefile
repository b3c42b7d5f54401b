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
KUSTOMIZE_VERSION := v5.8.1
ACTIONLINT_VERSION := v1.7.12
PACKAGES := pipeline-common pipeline-contracts ops data-fetch ml-pipeline model-serving
PACKAGE_FILES := $(foreach p,$(PACKAGES),$(p)/pyproject.toml)

export PYSPARK_PYTHON := $(abspath $(PY))
export SPARK_LOCAL_IP := 127.0.0.1

.PHONY: help as-root setup up down status run test test-checks lint validate promote format clean demo-anomaly chromium
.PHONY: bench-run bench-fetch bench-serving profile-serving bench-preprocess bench-train bench-scale
.PHONY: engine-up engine-down engine-status images image-test
.PHONY: cluster-binaries cluster-packages cluster-up cluster-status cluster-down cluster-env cluster-test cluster-push cluster-run cluster-run-test

# The targets that start the project's Docker engine or the local cluster (network namespaces,
# iptables, mounts) need root for the whole run: as another user they stop before any work,
# saying how to run them. Installing Debian packages alone goes through sudo
# (ops/scripts/lib/as-root.sh), so test-checks needs no root. `make validate` reads this
# list: a workflow on a GitHub-hosted runner must run these with sudo.
as-root:
	@test "$$(id -u)" -eq 0 || { echo "make $(MAKECMDGOALS): starts the project's Docker engine or the local cluster, which need root: run  sudo -E env PATH=\"\$$PATH\" make $(MAKECMDGOALS)" >&2; exit 2; }

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(VENV)/.installed $(TOOLS)/bin/ferretdb $(TOOLS)/jars/.fetched $(TOOLS)/bin/kustomize $(TOOLS)/bin/actionlint ## install everything the project needs

$(VENV)/.installed: requirements/dev.txt $(PACKAGE_FILES)
	test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(UV) pip install --quiet --compile-bytecode --python $(PY) -r requirements/dev.txt
	$(UV) pip install --quiet --python $(PY) --no-deps $(foreach p,$(PACKAGES),-e $(p))
	@# pyspark is a source distribution that uv builds anew at each install, leaving the last
	@# build (1.3 GB) in its cache each time: what no venv's install reaches any more goes
	$(UV) cache prune --quiet
	touch $@

$(TOOLS)/bin/ferretdb: ops/scripts/build-ferretdb.sh
	mkdir -p $(TOOLS)/bin
	ops/scripts/build-ferretdb.sh $(FERRETDB_VERSION) $@

$(TOOLS)/jars/.fetched: ops/jars/pom.xml
	rm -rf $(TOOLS)/jars && mkdir -p $(TOOLS)/jars
	mvn -q -B -Dstyle.color=never -f ops/jars/pom.xml dependency:copy-dependencies -DoutputDirectory=$(abspath $(TOOLS)/jars) -DincludeScope=runtime
	touch $@

$(TOOLS)/bin/kustomize:
	GOBIN=$(abspath $(TOOLS)/bin) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

# promtool (the alert rules' checks and unit tests) is built with the cluster's Prometheus
# (ops/cluster/binaries.tsv, cached outside the clone); the stamp names its version.
PROMTOOL_VERSION := $(shell awk -F'\t' '$$1 == "promtool" {print $$2}' ops/cluster/binaries.tsv)
PROMTOOL := $(TOOLS)/bin/.promtool-$(PROMTOOL_VERSION)
$(PROMTOOL): ops/scripts/build-cluster-binaries.sh
	ops/scripts/build-cluster-binaries.sh promtool
	mkdir -p $(TOOLS)/bin
	ln -sf "$${PR_ANOMALY_CACHE:-$$HOME/.cache/pr-anomaly}/cluster/bin/promtool-$(PROMTOOL_VERSION)" $(TOOLS)/bin/promtool
	touch $@

$(TOOLS)/bin/actionlint:
	GOBIN=$(abspath $(TOOLS)/bin) go install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)

up: setup ## start the local platform (Vault, MongoDB, MLflow) and configure Vault
	$(PY) -m pipeline_ops up

down: ## stop the local platform
	@test -x $(PY) && $(PY) -m pipeline_ops down || true

status: ## show what runs where
	$(PY) -m pipeline_ops status

run: setup ## set up, start the platform, run the pipeline through blue/green (KEEP_SERVING=1 keeps it up)
	$(PY) -m pipeline_ops run $(if $(KEEP_SERVING),--keep-serving)

demo-anomaly: setup ## score real and unusual pull requests with the champion, show which are flagged
	$(PY) -m pipeline_ops demo

bench-run: setup ## wall time of `make run` per step, fresh and re-run, in a temporary state dir
	$(PY) -m pipeline_ops.bench_run

lint: setup ## ruff, the import layers (import-linter), types (mypy: --strict below the stages, default above)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy --strict pipeline-common/src pipeline-contracts/src
	$(VENV)/bin/mypy data-fetch/src ml-pipeline/src model-serving/src ops/src

validate: setup $(PROMTOOL) ## offline checks of argo-apps, workflows, Dockerfiles (kustomize, schemas, linters, promtool)
	$(PY) -m pipeline_ops.validate

cluster-binaries: ## build the local cluster's binaries once per version (Go module proxy; cached outside the clone)
	ops/scripts/build-cluster-binaries.sh

chromium: ## install Debian's chromium if missing (the test that renders the run report)
	ops/scripts/install-chromium.sh

cluster-packages: ## install the cluster's Debian packages (containerd, runc, CNI plugins, iptables, openssl) if missing
	ops/scripts/install-cluster-packages.sh

# What cluster-up runs (the other binaries of ops/cluster/binaries.tsv are for later steps).
CLUSTER_UP_BINARIES := etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl coredns pause argocd kustomize spark-operator \
	rollouts-controller kubectl-argo-rollouts kube-network-policies registry \
	prometheus-operator prometheus-config-reloader prometheus-static alertmanager alert-receiver

cluster-up: as-root setup cluster-packages ## start the single-node Kubernetes (state, logs, kubeconfig in .local/cluster)
	ops/scripts/build-cluster-binaries.sh $(CLUSTER_UP_BINARIES)
	$(PY) -m pipeline_ops.cluster up

cluster-status: ## show every cluster component, its pid, health and log
	$(PY) -m pipeline_ops.cluster status

cluster-down: ## stop the cluster by pid and undo its host changes (interfaces, iptables, mounts, sysctls)
	@test -x $(PY) && $(PY) -m pipeline_ops.cluster down || true

cluster-test: as-root setup cluster-packages ## the cluster tests (pytest -m cluster): DNS, registry by digest, Rollouts and analysis, Argo CD, Spark Operator, Prometheus Operator and alerts
	ops/scripts/build-cluster-binaries.sh $(CLUSTER_UP_BINARIES) smoke
	$(PY) -m pytest -m "cluster and not cluster_run"

cluster-push: as-root setup ## push the images of `make images` to the cluster's registry (IMAGES="a b" for some); prints name -> digest
	$(PY) -m pipeline_ops.cluster push $(IMAGES)

cluster-run: as-root setup cluster-packages images ## the GitOps loop on the local cluster: staging via Argo CD, pipeline in pods, blue/green, promotion to production
	ops/scripts/build-cluster-binaries.sh $(CLUSTER_UP_BINARIES)
	$(PY) -m pipeline_ops.cluster run

cluster-run-test: as-root setup cluster-packages images ## make cluster-run as a test, alone (pytest -m cluster_run, twice: ~26 min; also part of make test)
	ops/scripts/build-cluster-binaries.sh $(CLUSTER_UP_BINARIES) smoke
	$(PY) -m pytest -m cluster_run

cluster-env: ## print the exports to use the cluster by hand (KUBECONFIG, kubectl on PATH)
	@$(PY) -m pipeline_ops.cluster env

promote: ## staging -> main with staging's digests: the pull request (gh), or PROMOTE_REMOTE=URL merges on a plain git remote
	ops/scripts/promote.sh $(if $(PROMOTE_REMOTE),'$(PROMOTE_REMOTE)')

test-checks: setup lint validate chromium ## what a pull request needs, no root: lint, validate, the tests against real local servers (not the images, not the cluster)
	$(PY) -m pytest -m "not images and not cluster"

test: as-root setup lint validate cluster-packages chromium ## lint, validate, build the images, then the whole test suite against real local servers and the local cluster
	ops/scripts/build-cluster-binaries.sh $(CLUSTER_UP_BINARIES) smoke
	$(PY) -m pipeline_ops.images with-engine -- sh -c '$(PY) -m pipeline_ops.images build && $(PY) -m pytest'

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean: down cluster-down ## remove local state (keeps installs and the binaries cache)
	rm -rf .local

bench-serving: setup ## ours vs `mlflow models serve` and a bare-FastAPI ceiling: the issue's goals, the tail, workers, the floor (~4 min)
	timeout 600 $(PY) model-serving/bench/bench_serving.py

profile-serving: setup ## where a scoring request's time goes, phase by phase, batch 1 and 1,000 (~1 min)
	$(PY) model-serving/bench/profile_request.py

engine-up: as-root setup ## install (once, Debian packages) and start the project's Docker engine
	$(PY) -m pipeline_ops.images engine-up

engine-down: ## stop the engine by pid; remove its bridge and iptables chains; restore sysctls
	@test -x $(PY) && $(PY) -m pipeline_ops.images engine-down || true

engine-status: ## the engine's pid, socket and health
	$(PY) -m pipeline_ops.images engine-status

images: as-root setup ## build the five images on local bases (debootstrap), tagged with the commit; size table
	$(PY) -m pipeline_ops.images build

image-test: as-root images ## run every image as its manifest runs it, against the real local platform
	$(PY) -m pipeline_ops.images test

bench-fetch: setup ## data-fetch: API requests per 1,000 PRs vs a naive REST client; upsert throughput
	$(PY) -u data-fetch/bench/bench_fetch.py

bench-preprocess: setup ## spark-preprocess rows/s vs single-process pandas: real sample, 100k (1M extrapolated)
	timeout 1800 $(PY) ml-pipeline/bench/bench_preprocess.py

bench-train: setup ## autoencoder vs IsolationForest on the bundled sample: rolling-origin backtest, time split, 100k-row epoch
	$(PY) -m ml_pipeline.training.bench

bench-scale: setup ## cost curves: each stage's time and peak memory against pull requests (synthetic; SCALE_SIZES, SCALE_FETCH_SIZES, SCALE_SERIES; with `make cluster-up` first, Spark on the cluster too; <= 20 min)
	$(PY) -u -m pipeline_ops.bench_scale
