# The two commands the README names: `make run` (install, then start the main job) and `make test`.
PYTHON ?= python3

.PHONY: install run test lint bench

install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e '.[dev]'

run: install
	clserve --demo

test:
	$(PYTHON) -m pytest

lint:
	ruff check cl_core registry worker service clbench tests
	ruff format --check cl_core registry worker service clbench tests
	mypy
