# Two commands do all the set-up on a fresh machine:
#   make run    start the middle tier and its page on http://localhost:8787 (local engine upstream)
#   make test   lint, type-check and run every test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# llama-cpp-python compiles from source: build for a portable x86-64 (AVX2) rather than -march=native,
# whose AMX kernels fault on some virtual machines.
ifeq ($(shell uname -m),x86_64)
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
endif

.PHONY: run test lint typecheck pytest engine bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	@echo "Installing aoai-realtime and its offline speech stack into $(VENV)"
	@echo "(the first time takes a few minutes: llama-cpp-python compiles from source)"
	$(BIN)/pip install --quiet -e '.[local,test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/aoai-realtime serve

engine: $(STAMP)
	$(BIN)/aoai-realtime engine

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
