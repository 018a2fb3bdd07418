# Two commands on a fresh machine: `make demo` (local stack + a streamed answer) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export SAM_CLI_TELEMETRY := 0

# Lambda runs Python 3.12: use it for the virtualenv (and so for `sam build`) when pyenv has it.
PYENV_312 := $(shell pyenv root 2>/dev/null)/versions/3.12.1/bin/python3.12
PYTHON ?= $(if $(wildcard $(PYENV_312)),$(PYENV_312),$(shell command -v python3.12 || command -v python3))
VENV := .venv
BIN := $(VENV)/bin
RUN := PATH="$(CURDIR)/$(BIN):$$PATH"

.PHONY: help setup demo serve lint typecheck validate build checkov unit test bench clean

# `make build ARCH=x86_64` builds for the other architecture (deploy with the same Architecture).
ARCH ?= arm64
BUILD_DIR ?= .aws-sam/build
# checkov pins boto3==1.35.49: it gets a virtualenv of its own so the project's boto3 stays current
CHECKOV_VENV := $(VENV)/checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov

help:
	@echo "make demo      set up, start the local stack, index samples/, stream an answer"
	@echo "make serve     the same, then keep serving on http://127.0.0.1:8080 (Ctrl-C stops)"
	@echo "make test      lint, types, sam validate --lint, sam build, tests"
	@echo "make bench     benchmarks (bench/), printing ratios measured side by side"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(RUN) python -m local.demo

serve: setup
	$(RUN) python -m local.demo --serve

lint: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .

typecheck: setup
	$(RUN) mypy

validate: setup
	$(RUN) sam validate --lint
	$(RUN) cfn-lint --include-checks I -- template.yaml infra/*.yaml

# sam build, then the runtime's bytecode (infra/bytecode.py: the layer is read-only in Lambda, so
# unshipped .pyc are compiled on every cold start). The tests build both architectures in
# .aws-sam/<arch>/ (bench/coldstart.py build()), apart from this one's cache.
build: setup
	rm -rf $(BUILD_DIR)
	$(RUN) sam build --build-dir $(BUILD_DIR) --parameter-overrides Architecture=$(ARCH)
	$(RUN) python infra/bytecode.py $(BUILD_DIR)

$(CHECKOV): pyproject.toml
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --group checkov
	touch $@

# every suppression is justified in the template (Metadata: checkov: skip: id, comment)
checkov: $(CHECKOV)
	$(CHECKOV) --framework cloudformation --skip-download --compact --quiet \
		$(foreach f,template.yaml $(wildcard infra/*.yaml),-f $(f))

unit: setup
	$(RUN) python -m pytest

test: lint typecheck validate checkov build unit

bench: setup build
	$(RUN) python -m bench

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
