# Two commands on a fresh machine: `make demo` (local stack + a streamed answer) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export SAM_CLI_TELEMETRY := 0

# Lambda runs Python 3.12, and `sam build` (without a container) needs the same version: the virtualenv
# is made with pyenv's newest 3.12 if any, else python3.12 from PATH, else `make PYTHON=/path/to/python3.12`.
PYENV_312 := $(lastword $(sort $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.12.*/bin/python3.12)))
PYTHON ?= $(or $(PYENV_312),$(shell command -v python3.12 2>/dev/null),python3.12)
UV := $(shell command -v uv 2>/dev/null)
VENV := .venv
BIN := $(VENV)/bin
RUN := PATH="$(CURDIR)/$(BIN):$$PATH"
DOCS ?= samples
Q ?=
ARGS ?=

.PHONY: help setup demo serve deploy backfill lint typecheck validate build checkov unit test soak bench bench-results eval doctor clean

# `make build ARCH=x86_64` builds for the other architecture (deploy with the same Architecture).
ARCH ?= arm64
BUILD_DIR ?= .aws-sam/build
# checkov pins boto3==1.35.49: it gets a virtualenv of its own so the project's boto3 stays current
CHECKOV_VENV := $(VENV)/checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov

help:
	@echo "make demo      set up, start the local stack, index DOCS (default samples/), stream an answer"
	@echo "               (make demo DOCS=./my-docs Q=\"your question\")"
	@echo "make serve     the same, then keep serving and indexing DOCS on http://127.0.0.1:8080 (Ctrl-C stops);"
	@echo "               bearer token CHAT_TOKEN (default local-dev-token), browser page at /, SigV4 on :8081"
	@echo "make test      lint, types, sam validate --lint, sam build, tests"
	@echo "make soak      many random indexing schedules (SCHEDULES=200 per store kind), invariants checked"
	@echo "make deploy    sam build + sam deploy --guided with the virtualenv's SAM CLI (ARGS=... for more options)"
	@echo "make backfill  index what is already in the deployed bucket, via its queue, with a progress bar"
	@echo "               (ARGS=\"--prune\", \"--local --workers 4\", \"--no-wait\", \"--attach\", \"--verify-chunks\", \"--demo 300\")"
	@echo "make bench     benchmarks (bench/), printed and written to .bench/RESULTS.md (QUICK=1: fewer runs)"
	@echo "make bench-results  the same, written to the tracked bench/RESULTS.md"
	@echo "make eval      retrieval recall@5 and MRR per mode on bench/eval/ (stand-ins, or the real models with DASHSCOPE_API_KEY)"
	@echo "make doctor    check the configured DashScope and OpenSearch (key, region, models, index)"
	@echo "Needs python3.12 (found: $(PYTHON)) and make; uv is used when installed: $(or $(UV),not found)."

$(BIN)/.installed: pyproject.toml
	@if ! "$(PYTHON)" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then \
	  echo "error: Python 3.12 is needed (Lambda's runtime, and sam build uses it); '$(PYTHON)' is not it." >&2; \
	  echo "  Get it with one of: uv python install 3.12 | pyenv install 3.12 | apt-get install python3.12 | brew install python@3.12," >&2; \
	  echo "  then run make again, or point at it: make $(or $(MAKECMDGOALS),setup) PYTHON=/path/to/python3.12" >&2; \
	  exit 2; \
	fi
ifneq ($(UV),)
	@echo "Creating $(VENV) with uv (Python $$("$(PYTHON)" -V | cut -d' ' -f2)) and installing the dev dependencies…"
	"$(UV)" venv --seed --allow-existing -p "$(PYTHON)" $(VENV)  # --seed: sam build needs pip in it
	"$(UV)" pip install -p $(BIN)/python -e '.[dev]'
else
	@echo "Creating $(VENV) (Python $$("$(PYTHON)" -V | cut -d' ' -f2)) and installing the dev dependencies with pip"
	@echo "(about 580 MB, a few minutes; install uv to make this ~5x faster)…"
	"$(PYTHON)" -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar on -e '.[dev]'
endif
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(RUN) python -m local.demo --docs "$(DOCS)" $(if $(Q),"$(Q)") $(ARGS)

serve: setup
	$(RUN) python -m local.demo --serve --docs "$(DOCS)" $(if $(Q),"$(Q)") $(ARGS)

deploy: build  # make build ships bytecode; a bare sam build would not
	$(RUN) sam deploy --guided $(ARGS)

backfill: setup
	$(RUN) python -m local.backfill $(ARGS)

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

# two workers, a test file each (--dist loadfile: a file's fixtures and builds stay in one process);
# most tests wait on loopback servers, so this halves the suite on 2 cores (12.8 -> 6.6 min)
PYTEST_WORKERS ?= 2
unit: setup
	$(RUN) python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=15

test: lint typecheck validate checkov build unit

soak: setup  # many more random indexing schedules than the suite runs (SCHEDULES per store kind)
	set -o pipefail; SCHEDULES=$${SCHEDULES:-200} $(RUN) python -m pytest -q -s -x -p no:cacheprovider tests/test_schedules.py | grep -E "^schedules run|[0-9]+ (passed|failed)|AssertionError: seed" | tail -3

# QUICK=1: fewer runs (bench/__main__.py), when the full set would take most of an hour on a busy machine
QUICK ?=
bench: setup build
	BENCH_QUICK=$(QUICK) BENCH_RESULTS=.bench/RESULTS.md $(RUN) python -m bench

bench-results: setup build
	BENCH_QUICK=$(QUICK) BENCH_RESULTS=bench/RESULTS.md $(RUN) python -m bench

eval: setup  # index samples/ + bench/eval/corpus/ through the local stack, score POST /v1/retrieve per mode
	$(RUN) python -m bench.eval

doctor: setup
	$(RUN) python -m rag_shared.doctor

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
