# csmil: the two set-up-and-go commands.
#   make demo   install into .venv and run the default workflow on the generated toy cohorts
#   make test       install the test dependencies into .venv and run the fast tier (unit tests and
#                   small integration tests; a few minutes on 2 cores)
#   make test-all   the fast tier plus the whole-workflow, incremental, toy-experiment and SLURM tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# Versions seen working together; see constraints.txt.
CONSTRAINTS := -c constraints.txt
PYTEST_ARGS ?=
# The slow tiers: whole-workflow runs (slow) and a private SLURM cluster (slurm).
FAST := -m "not slow and not slurm"

.PHONY: demo test test-all install install-test lint clean-results

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install --quiet $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet $(CONSTRAINTS) -e ".[test,slurm]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/snakemake --profile profiles/local
	@echo "csmil: done. Results are in $(CURDIR)/results (tables: results/tables/table5.md)"

test: install-test
	$(BIN)/python -m pytest $(FAST) $(PYTEST_ARGS)

test-all: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

clean-results:
	rm -rf results logs .snakemake
