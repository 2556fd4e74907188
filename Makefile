# Two commands for a fresh machine (see README):
#   make demo   creates .venv if absent, installs atzoo, runs the demo on the embedded dataset
#   make test   creates .venv if absent, installs atzoo with the dev extra, runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.atzoo-installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m atzoo.commands.demo

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs demo_runs .pytest_cache
