# fhirgoal developer commands. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Playwright drives Debian's chromium (scripts/system_packages.sh); it never downloads a browser.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: run run-open test lint format typecheck bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,test,dev]'
	touch $(STAMP)

install: $(STAMP)

# The server with its authorization server, the demo data and the clinician app (/app): prints a
# demo login and an EHR-launch link.
run: $(STAMP)
	$(BIN)/fhirgoal serve --host 127.0.0.1 --port 8080 --data-dir ./fhirgoal-data --demo

# No authorization (loopback callers only), for trying the API with curl.
run-open: $(STAMP)
	FHIRGOAL_AUTH=off $(BIN)/fhirgoal serve --host 127.0.0.1 --port 8080 --data-dir ./fhirgoal-data --demo

# The tests run in parallel processes (pytest-xdist), each with its own embedded database. They
# mostly wait on HTTP and the database, so one process more than the cores (2 cores: 3 processes,
# ~20 minutes; ~38 serially). TEST_JOBS=0 runs them in this process.
TEST_JOBS ?= $(shell $(PYTHON) -c 'import os; print(min(6, len(os.sched_getaffinity(0)) + 1))')

test: $(STAMP)
	scripts/system_packages.sh
	$(BIN)/python -m pytest -q -n $(TEST_JOBS)

lint: $(STAMP)
	$(BIN)/ruff check fhirgoal tests bench scripts
	$(BIN)/ruff format --check fhirgoal tests bench scripts
	$(BIN)/mypy fhirgoal

format: $(STAMP)
	$(BIN)/ruff format fhirgoal tests bench scripts
	$(BIN)/ruff check --fix fhirgoal tests bench scripts

bench: $(STAMP)
	$(BIN)/python bench/rest_core.py

clean:
	rm -rf $(VENV) fhirgoal-data
