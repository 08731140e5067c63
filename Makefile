# Two commands for a fresh machine: `make run` (the quickstart) and `make test` (the suite).
# Both create .venv when missing and reinstall only when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test test-slow test-gpu lint install

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/nasbench quickstart

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	OMP_NUM_THREADS=1 $(BIN)/pytest -q

# Slow and Ray-cluster tests: run by CI when its budget allows.
test-slow: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -m "slow or ray"

# GPU paths (skip without CUDA): run on any machine with a GPU.
test-gpu: $(STAMP)
	$(BIN)/pytest -q -m gpu
