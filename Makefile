# Two commands on a fresh machine:  `make demo` (the main job on the bundled CLINC150 example)
# and `make test` (the test suite). Each sets up .venv first, idempotently.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU wheel of torch goes in first, so no later requirement can pull a CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.potstill-installed
RUN    ?= runs/clinc150

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/potstill run examples/clinc150/potstill.yaml --workdir $(RUN)

test: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) runs
