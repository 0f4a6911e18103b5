# Two commands matter: `make run` and `make test`. Both install into .venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
OUT ?= out/example

.PHONY: run test test-slow lint typecheck format install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(DEVSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP) $@

install: $(STAMP)
install-dev: $(DEVSTAMP)

## Start the bundled sandbox, provision the example manifest against it, print the summary.
run: $(STAMP)
	$(BIN)/python scripts/run_example.py --out $(OUT)

## Lint, format check, type check, then the whole suite (slow variants excluded).
test: $(DEVSTAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -q

test-slow: $(DEVSTAMP)
	$(BIN)/pytest -q -m slow

format: $(DEVSTAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache

## Benchmarks against three baseline clients, one table (see BENCHMARKS.md); several minutes.
.PHONY: bench bench-quick
bench: $(STAMP)
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/bench_group.py

## The same scenarios at reduced sizes, under a minute.
bench-quick: $(STAMP)
	$(BIN)/python bench/bench.py --quick
