# Quick start: `make demo` (set up and run the main job) and `make test` (set up and run the tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# torch 2.13.0 first (the CPU build on these machines; an unpinned torch pulls CUDA wheels), then the rest.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mitoseg compare --quick --out demo-report --overwrite
	@echo "mitoseg demo: the report is demo-report/report.md (figures beside it)"

# -n auto: one test process per core (at most 4, for memory), each with its share of the cores' threads
# (tests/conftest.py); on 2 cores (AMD EPYC) 9.5 minutes in one process became about 6.5 (2026-11; the suite
# has grown since: 474 tests in 8 minutes, 2026-12-08)
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/pytest -q -n auto --maxprocesses 4

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_predict.py

clean:
	rm -rf $(VENV) demo-report
