# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Exact versions (torch's CPU build included) come from constraints.txt; pyproject.toml holds the ranges.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_INSTALL := $(BIN)/pip install --quiet -c constraints.txt

.PHONY: demo test lint bench docs clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(PIP_INSTALL) -e '.[test]'
	$(PIP_INSTALL) --no-deps k-diffusion  # its dependencies pull torchvision; scorelab.interop loads its sampler alone
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/scorelab demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n 2 tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

docs: $(STAMP)  # the API reference from the docstrings, into docs/api/
	$(BIN)/python docs/build_api.py docs/api

bench: $(STAMP)
	$(PIP_INSTALL) -e '.[test,bench]'
	$(BIN)/python benchmarks/samplers.py

clean:
	rm -rf $(VENV) build src/*.egg-info docs/api
