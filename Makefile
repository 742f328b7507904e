# The two commands of the README. Each installs into .venv first when needed.
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: run test test-quick lint install clean

$(STAMP): pyproject.toml requirements/constraints.txt scripts/install.sh
	./scripts/install.sh $(VENV)
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)       ## the main job end to end on embedded defaults (params.yaml)
	$(VENV)/bin/factory run

test: $(STAMP)      ## the whole test suite (what CI runs, after `make lint`)
	$(VENV)/bin/python -m pytest

test-quick: $(STAMP)  ## while developing: everything but the tests marked slow
	$(VENV)/bin/python -m pytest -m "not slow"

lint: $(STAMP)      ## ruff: pyflakes, bugbear, import order, docstrings, line length 120, formatting
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf data models bundles reports mlruns .pytest_cache
