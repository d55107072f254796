# Two commands do all the set-up on a fresh machine:
#   make run    start the middle tier and its page on http://localhost:8787 (local engine upstream)
#   make test   lint, type-check and run every test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIPECAT_VERSION := 1.14.0
# llama-cpp-python compiles from source: build for a portable x86-64 (AVX2) rather than -march=native,
# whose AMX kernels fault on some virtual machines.
ifeq ($(shell uname -m),x86_64)
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
endif

.PHONY: run test lint typecheck pytest browser engine bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# llama-cpp-python has no wheel on PyPI: the first install compiles it (about ten minutes on 2
# cores). pip's output goes to $(VENV)/install.log; a line every 15 s says what it is doing, and
# a failure shows the log's end. pip keeps the wheel it built, so later venvs take seconds.
$(STAMP): pyproject.toml | $(BIN)/python
	@echo "Installing aoai-realtime and its offline speech stack into $(VENV) (log: $(VENV)/install.log)"
	@if $(BIN)/pip cache list 'llama_cpp_python*' 2>/dev/null | grep -q llama_cpp_python; then \
	  echo "  llama-cpp-python: the wheel built before is reused"; \
	else \
	  echo "  one time only: llama-cpp-python compiles from source (about 10 minutes on 2 cores)"; \
	fi
	@$(BIN)/pip install -e '.[local,webrtc,test]' > $(VENV)/install.log 2>&1 & pid=$$!; \
	while kill -0 $$pid 2>/dev/null; do \
	  sleep 15; \
	  kill -0 $$pid 2>/dev/null && echo "  ... $$(grep -E '^ *(Collecting|Downloading|Building|Installing|Running)' $(VENV)/install.log | tail -n 1 | cut -c1-110)"; \
	done; \
	if wait $$pid; then echo "  installed"; else tail -n 40 $(VENV)/install.log; echo "pip install failed: see $(VENV)/install.log" >&2; exit 1; fi
	@# semantic_vad's end-of-turn model: only the file inside the wheel is used (pyproject.toml)
	$(BIN)/pip install --quiet --no-deps "pipecat-ai==$(PIPECAT_VERSION)" >> $(VENV)/install.log 2>&1
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/aoai-realtime serve

engine: $(STAMP)
	$(BIN)/aoai-realtime engine

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy --cache-dir $(VENV)/.mypy_cache

# The browser tests need Debian's Chromium: installed here when this user may (root with
# apt-get), else make stops with the command to run. SKIP_BROWSER=1 skips them, and says so.
browser:
ifeq ($(SKIP_BROWSER),1)
	@echo "make test: SKIP_BROWSER=1, the browser tests are skipped"
else
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Chromium for the browser tests (apt-get install -y chromium)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "make test needs Chromium for the browser tests: run" >&2; \
	    echo "  sudo apt-get install -y chromium" >&2; \
	    echo "(or make test SKIP_BROWSER=1 to skip them)" >&2; \
	    exit 1; \
	  fi; \
	fi
endif

pytest: $(STAMP) browser
	AOAI_REALTIME_BROWSER_TESTS=$(if $(filter 1,$(SKIP_BROWSER)),skip,required) $(BIN)/python -m pytest -q

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
