# Developer tasks.  `make test` is what the README gives and what CI runs (.ci/run).
# Every target is idempotent: reruns skip what is already in place.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Written once the venv holds the package and its dev tools; pyproject.toml
# changes make it stale, so pip runs again only then.
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := test
.PHONY: venv deps test test-fast lint demo

venv: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade 'pip>=25.1'
	$(BIN)/python -m pip install --quiet --editable . --group dev
	touch $@

# System packages (dovecot-imapd, Cyrus), installed through apt only when missing;
# cyrus-imapd unpacked into .cache/cyrus-imapd (it conflicts with dovecot-imapd).
deps:
	bash scripts/ensure-deps.sh

# All tests, the fault suite included: nothing is deselected.
test: deps venv
	$(BIN)/pytest tests

# The inner loop: all but the fault suite and the Cyrus runs (`make test` runs them).
test-fast: venv
	$(BIN)/pytest -q -x -m "not faults" -k "not cyrus" tests

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy inbound_mail testsupport tests benchmarks

demo: deps venv
	$(BIN)/python -m testsupport.demo
