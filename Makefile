# Two commands on a fresh machine with Python 3.11 and the package registries:
#   make run   — set up .venv and run the hub on its embedded default, with the demo network
#   make test  — set up .venv with the test extras and run the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench-ingest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/remote-dx serve --demo

test: $(STAMP)
	$(BIN)/ruff check src tests bench worker
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench worker
	$(BIN)/ruff format --check src tests bench worker

bench-ingest: $(STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) var .pytest_cache
