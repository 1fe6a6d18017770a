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

# The browser viewer (viewer/, Vite + TypeScript): node_modules from the lock file, then the
# build, redone when a page, a source or the config changes. The built files are not committed.
VIEWER_SOURCES := $(wildcard viewer/*.html viewer/*.ts viewer/tsconfig.json) \
	$(shell find viewer/src -type f 2>/dev/null)

# `npm install --no-save` installs the locked versions and never rewrites the lock. Not `npm ci`:
# npm 11 records only this platform's optional packages (rollup's, esbuild's) in the lock and
# `npm ci` then refuses the lock it wrote itself as "out of sync".
viewer/node_modules/.package-lock.json: viewer/package.json viewer/package-lock.json
	cd viewer && npm install --no-audit --no-fund --no-save

viewer/dist: viewer/node_modules/.package-lock.json $(VIEWER_SOURCES)
	cd viewer && npm run build
	touch viewer/dist

run: $(STAMP) viewer/dist
	$(BIN)/remote-dx serve --demo

test: $(STAMP) viewer/dist
	$(BIN)/ruff check src tests bench worker
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench worker
	$(BIN)/ruff format --check src tests bench worker

bench-ingest: $(STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) var .pytest_cache
