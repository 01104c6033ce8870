# Quick start: `make run` serves API + worker + dashboard on SQLite; `make test` runs every test.
# Both create the virtualenv on first use from the pinned dependencies in pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck check bench clean setup

# Some machines set PYTHONDONTWRITEBYTECODE: then every process compiles every module it imports
# again, and the tests start hundreds of processes (and pytest's three workers each rewrite every
# test module: collection took 9.3 s a worker against 3.3 s with the cache written).
unexport PYTHONDONTWRITEBYTECODE

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Browser tests drive Debian's Chromium (never a downloaded browser build).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "note: $(CHROMIUM) is missing; browser tests need Debian's chromium (apt-get install chromium)"; \
	fi

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/ingestlayer serve

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck

# Three workers on two cores, a test file each at a time: most tests wait on servers, receivers
# and subprocesses, so a third worker fills the waits (fresh clones, same VM phase: 8:16 against
# 10:11 with two workers; one process takes about half as long again as two).
test: $(STAMP) check $(CHROMIUM)
	$(BIN)/python -m pytest -q -n 3 --dist loadfile --durations=15

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
