# Two commands on a fresh machine:  `make demo` (the main job on the bundled CLINC150 example)
# and `make test` (the test suite). Each sets up .venv first, idempotently.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU wheel of torch goes in first, so no later requirement can pull a CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.potstill-installed
RUN    ?= runs/clinc150

.PHONY: setup demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/potstill run examples/clinc150/potstill.yaml --workdir $(RUN)

# The tiny test models are the same in every session (a fixed tokenizer vocabulary, seeded
# weights: tests/conftest.py). Some end-to-end tests run servers and subprocesses against each
# other on a shared 2-core machine, so a failed run is followed by one rerun of just the failed
# tests (pytest --lf); the rerun's result is the command's, and both runs' summaries stay in the
# log, so a test that needed the rerun is seen.
test: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q || HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q --lf

# the unit tests alone (no end-to-end training runs or servers): seconds, for the edit-test loop
test-fast: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q -m "not e2e and not slow"

# ruff (lint + import order) and mypy (the typed layers, see pyproject.toml)
lint: setup
	$(VENV)/bin/ruff check potstill bench tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) runs
