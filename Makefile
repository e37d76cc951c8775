# LienWatch: two commands do all set-up on a fresh machine.
#   make demo   the whole chain on embedded defaults
#   make test   lint, type checks, unit + property + HIL tests
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint typecheck unit process hil bench system venv clean help

help:
	@echo "make demo   - set up and run the whole chain (simulator -> agent -> broker -> collector -> API)"
	@echo "make test   - set up and run lint, type checks and every test tier (unit, process, HIL)"
	@echo "make unit   - only the fast in-process tier (no broker, no database server, no child process)"
	@echo "make bench  - run the benchmarks in bench/"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11+"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: Python 3.11+ is required"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

# Mosquitto and PostgreSQL come from the system's packages: installed with apt-get when
# running as root, otherwise we say exactly what to install.
system:
	@bash .ci/system-packages.sh

lint: venv
	$(BIN)/ruff check protocol edge collector firmware-sim tests $(wildcard hil-tests) bench
	$(BIN)/lint-imports
	@# No collector function at cyclomatic grade D or worse (radon lists them; the list must be empty).
	@complex="$$($(BIN)/radon cc -n D collector)"; if [ -n "$$complex" ]; then echo "$$complex"; exit 1; fi

typecheck: venv
	$(BIN)/mypy protocol edge collector

test: venv system lint typecheck
	$(BIN)/python -m pytest -q

# One test tier at a time (markers applied by tests/tiers.py; README "Tests and benchmarks").
unit: venv
	$(BIN)/python -m pytest -q -m unit

process: venv system
	$(BIN)/python -m pytest -q -m process

hil: venv system
	$(BIN)/python -m pytest -q -m hil

demo: venv system
	$(BIN)/lienwatch demo

bench: venv system
	@for b in bench/*_bench.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
