# The two commands of the README. Each installs into .venv first when needed.
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: run test test-quick lint docs install clean

$(STAMP): pyproject.toml requirements/constraints.txt scripts/install.sh
	./scripts/install.sh $(VENV)
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)       ## the main job end to end on embedded defaults (params.yaml)
	$(VENV)/bin/factory run

test: $(STAMP)      ## the whole test suite in one process (what CI runs, after `make lint` and `make docs`)
	$(VENV)/bin/python -m pytest tests/

test-quick: $(STAMP)  ## while developing: everything but the tests marked slow
	$(VENV)/bin/python -m pytest -m "not slow"

lint: $(STAMP)      ## ruff: pyflakes, bugbear, import order, docstrings, line length 120, formatting
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

docs: $(STAMP)      ## the documentation site (build/site): reference pages generated from the code, warnings are errors
	$(VENV)/bin/python scripts/gen_docs.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

clean:
	rm -rf data models bundles reports mlruns .pytest_cache
