# HOPS developer entry points. `make test` and `make demo` install what they need first, so each is
# one command on a fresh machine (Python 3.11+, npm; nothing else needs to be there).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hops-installed
BUF := tools/buf/node_modules/.bin/buf
BROWSER := tools/browser/node_modules/.installed
SYSDEPS := $(VENV)/.hops-system-deps
PROTOS := $(wildcard proto/hops/v1/*.proto)
GEN := gen/python
PYTEST_ARGS ?=

.PHONY: help install proto proto-check lint fmt test check demo bench clean lock docs

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP) $(BUF) $(BROWSER) $(SYSDEPS) ## .venv with pinned deps + HOPS editable, buf and playwright-core via npm, nginx/chromium/wrk via apt when missing (idempotent)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

$(BUF): tools/buf/package.json tools/buf/package-lock.json
	cd tools/buf && npm install --no-save --no-audit --no-fund --loglevel=error
	@touch $@

$(BROWSER): tools/browser/package.json tools/browser/package-lock.json
	cd tools/browser && npm install --no-save --no-audit --no-fund --loglevel=error
	@touch $@

$(SYSDEPS): scripts/system-deps.sh | $(STAMP)
	scripts/system-deps.sh
	@touch $@

proto: $(STAMP) ## Regenerate gen/python from proto/ (Python, gRPC and .pyi stubs)
	rm -rf $(GEN)/hops
	mkdir -p $(GEN)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -Iproto \
		--python_out=$(GEN) --grpc_python_out=$(GEN) \
		--mypy_out=quiet:$(GEN) --mypy_grpc_out=quiet:$(GEN) $(PROTOS)
	touch $(GEN)/hops/__init__.py $(GEN)/hops/v1/__init__.py

proto-check: install ## buf lint, buf format, and fail if regenerating changes gen/
	$(BUF) lint
	$(BUF) format --diff --exit-code
	$(MAKE) --no-print-directory proto
	@git diff --exit-code --stat -- $(GEN) && test -z "$$(git status --porcelain -- $(GEN))" \
		|| { echo "gen/ is stale: run 'make proto' and commit the result"; exit 1; }

lint: install ## ruff (lint + format check) and mypy --strict on our packages
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: install ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: install ## Run the whole test suite (slow multi-process tests included)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest $(PYTEST_ARGS)

docs: install ## Regenerate docs/configuration.md from the settings objects
	$(PY) -m hopscommon.configdoc > docs/configuration.md

check: lint proto-check test ## Everything CI runs

demo: install ## A local fleet (control plane, 4 simulated hosts + agents, edge) on 127.0.0.1:11434
	$(PY) scripts/demo.py

bench: install ## Run the benchmarks under bench/ (figures printed, JSON in bench/results/)
	$(PY) bench/sim_capacity.py
	$(PY) bench/controlplane.py
	$(PY) bench/routing_cost.py
	$(PY) bench/routing_cost.py --reply-limit 20 --json bench/results/routing_cost_limited.json
	$(PY) bench/routing_cost.py --reply-limit 1 --limited 1 \
		--json bench/results/routing_cost_one_token.json
	$(PY) bench/routing.py
	$(PY) bench/routing_bound.py --against bench/results/routing.json
	$(PY) bench/mixed_context.py
	$(PY) bench/long_prompts.py
	$(PY) bench/affinity.py
	$(PY) bench/long_context.py
	$(PY) bench/overhead.py

clean: ## Remove the venv, buf and caches
	rm -rf $(VENV) tools/buf/node_modules tools/browser/node_modules test-artifacts .mypy_cache .ruff_cache .pytest_cache

lock: ## Re-resolve the newest versions allowed by pyproject.toml into requirements.lock
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip && .venv-lock/bin/pip install --quiet -e '.[dev]'
	{ echo "# Exact versions for a reproducible install (make install). Regenerate with 'make lock' after"; \
	  echo "# changing the ranges in pyproject.toml."; \
	  echo "setuptools==$$(.venv-lock/bin/python -c 'import setuptools; print(setuptools.__version__)')"; \
	  .venv-lock/bin/pip freeze --exclude-editable | grep -v '^-e' | grep -vi '^hops'; } > requirements.lock
	rm -rf .venv-lock
