# make run   - set up .venv (once) and run jobs/quickstart.yaml
# make test  - set up .venv (once) and run every test tier (unit, integration, slow)
# TORCH_SPEC: CPU users keep the pin (a local CPU wheel); GPU users may override,
# e.g. `make test TORCH_SPEC="torch==2.13.0 --index-url https://..."`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-install

.PHONY: install run test test-fast clean

install: $(STAMP)

# torch first: deepspeed ships an sdist that imports torch at build time, and an
# unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

run: install
	$(BIN)/palimpsest run jobs/quickstart.yaml

test: install
	$(BIN)/python -m pytest -q --durations=20 tests

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
