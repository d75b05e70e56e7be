# The two set-up commands: `make demo` and `make test`. Each creates .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SECONDS ?= 30

.PHONY: demo test test-all lint fmt schemas quality clean

$(BIN)/gridstream: pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev: $(BIN)/gridstream
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/gridstream
	$(BIN)/gridstream demo --seconds $(SECONDS)

# test: everything but the tests marked slow (fault injection, soak), in under five minutes on
# two cores; test-all (what .ci/run runs) adds them.
test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

schemas: $(BIN)/gridstream
	$(BIN)/python -m schemas.generate
	$(BIN)/python -m schemas.wire

quality: $(BIN)/gridstream
	$(BIN)/python benchmarks/quality_nab.py
	$(BIN)/python -m benchmarks.nab_loco
	$(BIN)/python benchmarks/quality_ett.py
	$(BIN)/python -m benchmarks.sim_seeds

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
