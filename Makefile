# `make test`: the README's test command. Creates .venv if missing, installs the project with its dev extras,
# runs the unit and in-process plugin tests (no cluster), then brings the testbed up (building its binaries
# once, cached in ~/.cache/k8s-gpu-acceptance) and runs the self-tests. The testbed is left running for fast
# re-runs: `make down` stops it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint lint-workflows up down status env acceptance

$(PY):
	@echo "[make] creating $(VENV) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(VENV)

# uv resolves and installs in about a minute; pip's resolver was seen backtracking through boto3 releases
# for over 15 minutes on this dependency set. uv itself comes from PyPI into the venv.
# --compile-bytecode: with PYTHONDONTWRITEBYTECODE=1 (set on this machine, and CI is one like it) nothing caches
# bytecode, and every pytest start compiled the kubernetes client again: collecting tests/gpu took 6.4-6.9 s
# without .pyc files and 3.6-3.8 s with them (2 cores, measured 2026-11-25); compiling the venv costs ~75 s once.
$(STAMP): pyproject.toml | $(PY)
	@echo "[make] installing uv, then the project with its dev extras into $(VENV)"
	$(PY) -m pip install --quiet --progress-bar off 'uv>=0.5'
	$(VENV)/bin/uv pip install --compile-bytecode --python $(PY) -e '.[dev]'
	@touch $(STAMP)

test: $(STAMP) lint-workflows
	$(PY) -m pytest tests/unit -m 'not gpu'
	$(PY) -m testbed up
	$(PY) -m testbed build --argo
	$(PY) -m pytest tests/self -m 'not gpu'

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

up: $(STAMP)
	$(PY) -m testbed up

down: $(STAMP)
	$(PY) -m testbed down

status: $(STAMP)
	$(PY) -m testbed status

env: $(STAMP)
	@$(PY) -m testbed env

# `make acceptance`: install, then the acceptance layers against the current kubeconfig (or this host when
# there is none). Pass options through ARGS, e.g. make acceptance ARGS="--gpus=2 --runtime-class=nvidia".
acceptance: $(STAMP)
	$(PY) -m pytest -m gpu $(ARGS)

# actionlint for the workflow examples in docs/examples: built once from the Go module proxy at a pinned
# version into the testbed's cache (53 s measured on 2 cores), then a lint takes milliseconds.
ACTIONLINT_VERSION := v1.7.12
TOOLS_DIR := $(or $(TESTBED_CACHE_DIR),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/k8s-gpu-acceptance)/tools
ACTIONLINT := $(TOOLS_DIR)/actionlint-$(ACTIONLINT_VERSION)/actionlint

$(ACTIONLINT):
	@echo "[make] building actionlint $(ACTIONLINT_VERSION) from the Go module proxy (once; cached in $(TOOLS_DIR))"
	GOBIN=$(dir $(ACTIONLINT)) go install -ldflags='-s -w' github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)

lint-workflows: $(ACTIONLINT)
	$(ACTIONLINT) -config-file docs/examples/actionlint.yaml docs/examples/*.yml
