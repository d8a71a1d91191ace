# Ferry's developer entry points. The README's two commands are `make demo` and `make test`;
# .ci/run calls `make test` and nothing else, so what passes here passes in CI.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Everything downloaded or built (Go modules, Go build cache, cluster binaries, pip wheels) lives here,
# outside the clone, so later runs and CI on the same machine reuse it.
export FERRY_CACHE ?= $(HOME)/.cache/ferry
export PIP_CACHE_DIR ?= $(FERRY_CACHE)/pip
# The venv is rebuilt whenever the declared dependencies change.
VENV_STAMP := $(VENV)/.stamp-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV_STAMP): pyproject.toml constraints.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[operator,runtime,optimizer,dev]'
	touch $@

.PHONY: venv
venv: $(VENV_STAMP) ## create the development environment (.venv) from pyproject.toml + constraints.txt

.PHONY: lint
lint: venv ## ruff (incl. the stdlib-shadowing rules) and the import contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

.PHONY: typecheck
typecheck: venv ## mypy --strict over every package
	$(BIN)/mypy -p ferry_operator -p ferry_runtime -p ferry_optimizer -p ferry_devcluster

.PHONY: generated
generated: venv ## fail when a generated artifact (CRD YAML, API docs, protocol stubs, chart docs) drifts
	$(BIN)/python scripts/generate.py --check

.PHONY: check
check: lint typecheck generated ## every static gate

.PHONY: unit
unit: venv ## fast tests only
	$(BIN)/pytest -m "not cluster and not e2e"

.PHONY: test
test: check ## the full suite: static gates, unit, cluster and e2e tests (what CI runs)
	$(BIN)/pytest

.PHONY: demo
demo: venv ## quick start: a local cluster with a real node, Ferry installed and a sample model served
	bash scripts/install-system-deps.sh  # containerd, runc, podman, prometheus: installed only when missing
	$(BIN)/python scripts/demo.py

.PHONY: fmt
fmt: venv ## format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
