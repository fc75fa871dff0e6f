# The two commands of the README: `make demo` (set up, then run the offline demo) and `make test`
# (the fast lane); CI also runs `make test-slow` (trainings in subprocesses, clusters, the demo) and `make test-parity`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-base
PARITY_STAMP := $(VENV)/.installed-parity

.PHONY: setup demo test test-slow test-parity tables clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,demo]"
	touch $@

demo: $(STAMP)
	$(BIN)/jaxbiqa demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow and not parity"

# Parity with transformers' PyTorch models: installs the CPU torch wheel (about 1 GB), then runs those tests only.
$(PARITY_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,demo,parity]"
	touch $@

test-parity: $(PARITY_STAMP)
	$(BIN)/python -m pytest -q -m parity

# the memory tables of README.md and docs/ from the shipped recipes (`jaxbiqa plan --config ...`)
tables: $(STAMP)
	$(BIN)/python tools/regenerate_tables.py

clean:
	rm -rf $(VENV) runs .pytest_cache
