# The two commands the README names: `make run` (install, then start the main job) and `make test`.
#
# Inside an activated virtual environment everything installs there; outside one the project makes its own
# (.venv in the checkout), so neither command installs into the system's Python (which Debian refuses anyway).
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := $(CURDIR)/.venv
endif
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.continual-serve-installed
TORCH ?= torch==2.13.0

.PHONY: install run test lint smoke screenshots

$(PYTHON):
	python3 -m venv $(VENV)

# PyTorch first, and only when none is importable: a resolver left to pick torch itself may fetch a multi-GB
# CUDA build.  Re-installs the project when pyproject.toml changes.
$(INSTALLED): pyproject.toml | $(PYTHON)
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install $(TORCH)
	$(PYTHON) -m pip install -e '.[dev]'
	touch $(INSTALLED)

install: $(INSTALLED)

run: install
	$(VENV)/bin/clserve --demo

test: install
	$(PYTHON) -m pytest

lint: install
	$(PYTHON) -m ruff check cl_core registry worker service clbench tests
	$(PYTHON) -m ruff format --check cl_core registry worker service clbench tests
	$(PYTHON) -m mypy

# The console's screenshots in docs/ (the README shows one): a real `clserve --demo` and the system's Chromium.
screenshots: install
	$(PYTHON) -m tests.e2e.screenshots docs

# The deployment for real: build the image, run redis, the API replicas, a worker and Prometheus with Compose, teach
# the demo model new digits, check health, users and metrics, tear down (tests/deploy/smoke.py). Takes minutes and
# needs a Docker engine, so neither `make test` nor .ci/run runs it. Image build arguments go in BUILD_ARGS, e.g.
#   make smoke BUILD_ARGS="TORCH_INDEX_URL=https://idx.example/simple"
BUILD_ARGS ?=
smoke:
	python3 -m tests.deploy.smoke $(foreach arg,$(BUILD_ARGS),--build-arg $(arg))
