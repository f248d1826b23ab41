# The two commands of the README's quickstart. Each sets the machine up first (scripts/setup.sh,
# re-run only when it or pyproject.toml changed since the last setup) and is safe to re-run:
#
#   make demo   # the main job: the embedded default (config/config.yaml), data -> figures
#   make test   # the test suite, as CI runs it (.ci/run)
#
# CORES=N sets the demo's cores (default: every core); PYTEST_ARGS the test run's flags.

CORES ?= $(shell nproc)
PYTEST_ARGS ?= -q -rs -p no:cacheprovider
VENV := .venv
SETUP_STAMP := $(VENV)/.ropelaw-setup

.PHONY: setup demo test

setup: $(SETUP_STAMP)

$(SETUP_STAMP): scripts/setup.sh pyproject.toml
	bash scripts/setup.sh
	touch $@

demo: $(SETUP_STAMP)
	$(VENV)/bin/snakemake --cores $(CORES)

test: $(SETUP_STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
