# Every target bootstraps its own virtual environment: only python3 >= 3.11 is assumed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready
# The extra .venv installs: dev (suite, lint, protos, docs), or test (the suite alone) for the
# environments that only run the suite (test-on, test-lowest).
EXTRAS ?= dev
# The suite on two xdist worker processes: most tests wait on the worker processes they
# start, so two of them share 2 cores well. The tests that keep both cores busy for long
# (marked xdist_group("heavy"), see tests/conftest.py) all go to one worker, one after
# another (--dist loadgroup), so that no two of them compete. More workers than cores would
# make the timing-sensitive tests (keepalive, grace) compete for CPU. `make test XDIST=` runs
# the suite in one process.
XDIST ?= -n 2 --dist loadgroup

.PHONY: env env-on env-lowest test test-on test-lowest test-bench demo bench soak proto proto-check lint docs clean

# CONSTRAINTS=file pins what the environment installs (see test-lowest).
$(READY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]' $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	touch $(READY)

env: $(READY)

test: $(READY)
	$(BIN)/python -m pytest $(XDIST)

# The suite on one more interpreter, in an environment of its own: make test-on PY=python3.12
test-on:
	$(MAKE) test PYTHON=$(PY) VENV=.venv-$(notdir $(PY)) EXTRAS=test

# The suite with every dependency at the lowest version pyproject.toml allows.
test-lowest:
	$(PYTHON) .ci/lowest.py pyproject.toml > .ci/lowest.txt
	$(MAKE) test VENV=.venv-lowest CONSTRAINTS=.ci/lowest.txt EXTRAS=test

# Only the environments of test-on and test-lowest (.ci/run builds them while it lints).
env-on:
	$(MAKE) env PYTHON=$(PY) VENV=.venv-$(notdir $(PY)) EXTRAS=test

env-lowest:
	$(PYTHON) .ci/lowest.py pyproject.toml > .ci/lowest.txt
	$(MAKE) env VENV=.venv-lowest CONSTRAINTS=.ci/lowest.txt EXTRAS=test

# The tests that run the benchmark harness end to end (minutes): not part of `make test`.
test-bench: $(READY)
	$(BIN)/python -m pytest -m bench

demo: $(READY)
	$(BIN)/python examples/quickstart.py

# The caller gets the malloc settings spawned workers get (see docs/streaming.md): without
# them glibc faults in every fresh large buffer, which halves large-payload throughput.
bench: $(READY)
	MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=536870912 $(BIN)/python benchmarks/run.py

# Mixed calls against a pool of 2 for MINUTES (10), RSS once a minute; fails on any
# unexpected error: make soak MINUTES=1 SOAK_ARGS="--backend trio"
MINUTES ?= 10
soak: $(READY)
	$(BIN)/python benchmarks/soak.py --minutes $(MINUTES) $(SOAK_ARGS)

proto: $(READY)
	$(BIN)/python protos/generate.py

proto-check: $(READY)
	$(BIN)/python protos/generate.py --check

lint: $(READY)
	$(BIN)/ruff check src tests benchmarks examples protos docs
	$(BIN)/ruff format --check src tests benchmarks examples protos docs
	$(BIN)/pyright

clean:
	rm -rf $(VENV) .venv-* .ci/lowest.txt build dist docs/_build

# The site is built offline (intersphinx reads docs/_intersphinx/); any warning fails it.
docs: $(READY)
	$(BIN)/python -m sphinx -E -W --keep-going -n -q -b html docs docs/_build/html
