# make run   - set up .venv (once) and run jobs/quickstart.yaml
# make test       - set up .venv (once) and run every test tier (unit, heavy, integration, cluster, slow)
# make test-fast  - unit behaviour of every module, for iteration: no Ray, no whole jobs, no learning thresholds
# make bench - set up .venv (once, with the bench extra) and run every benchmark in jobs/bench/
# TORCH_SPEC: CPU users keep the pin (a local CPU wheel); GPU users may override,
# e.g. `make test TORCH_SPEC="torch==2.13.0 --index-url https://..."`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-install
BENCH_STAMP := $(VENV)/.stamp-bench

.PHONY: install run test test-fast bench clean

install: $(STAMP)

# torch first: deepspeed ships an sdist that imports torch at build time, and an
# unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev,popgym]"
	touch $(STAMP)

run: install
	$(BIN)/palimpsest run jobs/quickstart.yaml

# Two runs, both always: the tests without Ray on 2 processes (pytest-xdist), then the tests that start Ray one at a
# time (two Ray instances on one machine contend for the same cores and were barely faster: 1416 s against 1463 s, each test twice as slow).
test: install
	$(BIN)/python -m pytest -q -n 2 --durations=10 -m "not integration and not cluster" tests; without_ray=$$?; \
	$(BIN)/python -m pytest -q --durations=20 -m "integration or cluster" tests; with_ray=$$?; \
	test $$without_ray -eq 0 -a $$with_ray -eq 0

# the bench extra (POPGym, the environments' comparison) on top of the dev install
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	touch $(BENCH_STAMP)

# every jobs/bench/ spec as one job: one table, bench.json and plots/bench.png in runs/bench-<time>
bench: $(BENCH_STAMP)
	$(BIN)/palimpsest bench jobs/bench

# tiers by marker (pyproject.toml): slow = learning thresholds; heavy = whole jobs and long computations without
# Ray; integration = the shared local Ray session; cluster = Ray clusters of the tests' own
test-fast: install
	$(BIN)/python -m pytest -q -n 2 -m "not slow and not heavy and not integration and not cluster" tests

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
