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

.PHONY: help setup demo serve lint typecheck validate build unit test soak bench doctor clean

help:
	@echo "make demo      set up, start the local stack, index samples/, stream an answer"
	@echo "make serve     the same, then keep serving on http://127.0.0.1:8080 (Ctrl-C stops)"
	@echo "make test      lint, types, sam validate --lint, sam build, tests"
	@echo "make soak      many random indexing schedules (SCHEDULES=200 per store kind), invariants checked"
	@echo "make bench     benchmarks (bench/), printing ratios measured side by side"
	@echo "make doctor    check the configured DashScope and OpenSearch (key, region, models, index)"

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

build: setup
	$(RUN) sam build

unit: setup
	$(RUN) python -m pytest

test: lint typecheck validate build unit

soak: setup  # many more random indexing schedules than the suite runs (SCHEDULES per store kind)
	set -o pipefail; SCHEDULES=$${SCHEDULES:-200} $(RUN) python -m pytest -q -s -x -p no:cacheprovider tests/test_schedules.py | grep -E "^schedules run|[0-9]+ (passed|failed)|AssertionError: seed" | tail -3

bench: setup build
	$(RUN) python -m bench

doctor: setup
	$(RUN) python -m rag_shared.doctor

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
