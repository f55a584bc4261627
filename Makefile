# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/quickstart
PYTEST_ARGS ?=
# One worker per core (at most 4: each imports JAX and TensorFlow). Whole files go to one worker
# (tests/conftest.py sends the averaged run's users to one together), so a file's module
# fixtures (a tiny trained run, say) are built once. Most of the suite is single-threaded XLA
# compilation, so 2 workers on 2 cores take ~0.65x the serial time.
PYTEST_WORKERS ?= -n auto --maxprocesses=4 --dist loadfile
# The demo needs only the core packages; the tests also check the TensorFlow-based extras.
TEST_EXTRAS := dev,pretrained,export

.PHONY: demo test clean-venv

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Each stamp records an install; it is redone when pyproject.toml changes.
$(VENV)/.installed-core: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e ".[$(TEST_EXTRAS)]"
	touch $@ $(VENV)/.installed-core

demo: $(VENV)/.installed-core
	mkdir -p $(dir $(WORKDIR))
	$(PY) launch.py --config configs/quickstart.py --workdir $(WORKDIR)

test: $(VENV)/.installed-test
	$(PY) -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
