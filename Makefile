# The two commands of the README. Each installs into .venv first when needed.
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: run test test-all install clean

$(STAMP): pyproject.toml requirements/constraints.txt scripts/install.sh
	./scripts/install.sh $(VENV)
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)       ## the main job end to end on embedded defaults (params.yaml)
	$(VENV)/bin/factory run

test: $(STAMP)      ## the default (fast) test suite
	$(VENV)/bin/python -m pytest -m "not slow"

test-all: $(STAMP)  ## everything, including slow tests (full trainings, real builds)
	$(VENV)/bin/python -m pytest

clean:
	rm -rf data models bundles reports mlruns .pytest_cache
