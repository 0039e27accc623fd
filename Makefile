# One-command set-up and use. `make demo` and `make test` work on a fresh machine (Python >= 3.11).
#   make setup   create .venv, install torch==2.13.0 (CPU wheel) first, then recon with every extra
#   make demo    set up, then reconstruct the embedded synthetic demo scene into outputs/demo
#   make test    set up, then run the test suite (slow tests excluded; `make test-slow` runs them)
#   make lint    set up, then ruff and the import contract (lint-imports, [tool.importlinter] in pyproject.toml)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.recon-installed
OUT    ?= outputs/demo

.PHONY: setup demo test test-slow lint bench clean
setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all]'
	@bash scripts/install_system_deps.sh
	@touch $(STAMP)

demo: setup
	$(BIN)/recon demo --out $(OUT)

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check recon viewer scripts tests
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python scripts/bench_raster.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
