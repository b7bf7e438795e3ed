# Everything a fresh machine with Python 3.11 and pip needs: `make run`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run demo test test-fast lint bench compare clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Serves the sample data over HTTP (and the PostgreSQL-wire proxy when installed);
# creates the analyst 'demo' on first start and prints its key, a curl line and a
# Python snippet. Ctrl-C stops it.
run: $(STAMP)
	$(BIN)/gateway serve --policy policies/web.yaml --demo

# The in-process tour: a few DP queries with their cost and accuracy.
demo: $(STAMP)
	$(BIN)/gateway demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/mypy gateway

bench: $(STAMP)
	$(BIN)/python bench/bench_core.py
	$(BIN)/python bench/bench_noise.py
	$(BIN)/python bench/bench_http.py
	$(BIN)/python bench/bench_pgwire.py
	$(BIN)/python bench/bench_train.py

# docs/accuracy.md and docs/accuracy/*.png: the gateway against SmartNoise SQL and exact
# DuckDB (bench/compare.py, a few minutes). The compare extra pins smartnoise-sql, which
# needs pandas < 3: it moves pandas back to 2.x in .venv.
compare: $(STAMP)
	$(BIN)/pip install --quiet -e '.[compare]'
	$(BIN)/python bench/compare.py

clean:
	rm -rf $(VENV) .gateway .pytest_cache .mypy_cache .ruff_cache
