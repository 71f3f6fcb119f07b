# Two commands for a new user: `make demo` and `make test`. Everything installs from uv.lock into .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.awo-installed
PYTEST_WORKERS ?= 2

.PHONY: install demo test lint bench clean services

$(STAMP): pyproject.toml uv.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || $(PY) -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --frozen --quiet --python $(PY)
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/awo demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Real services the tests start: installed from Debian when missing and we may (root with apt);
# otherwise the tests that need them skip with the reason.
DEBIAN_SERVICES := redis-server:redis-server prometheus:prometheus hey:hey chromium:chromium
services:
	@for pair in $(DEBIAN_SERVICES); do \
	  bin=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$bin >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get install -y -qq --no-install-recommends $$pkg >/dev/null 2>&1 || \
	      (apt-get update -qq && apt-get install -y -qq --no-install-recommends $$pkg) >/dev/null 2>&1; }; } || \
	  echo "note: $$bin not available; the tests that need it will skip"; \
	done
	@# PostgreSQL for the MLflow tracking server (scripts/mlflow-server.sh): Debian keeps its binaries off PATH.
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1 || \
	    (apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql) >/dev/null 2>&1; }; } || \
	  echo "note: PostgreSQL not available; the MLflow tracking server tests will skip"
	@# The local LLM (llama.cpp's server + SmolLM2): compiled once into ~/.cache/awo (10-16 min on 2 cores),
	@# seconds afterwards; the LLM tests skip with the reason when it cannot be built.
	@scripts/llm.sh build >/dev/null && scripts/llm.sh install >/dev/null || \
	  echo "note: the local LLM could not be built (scripts/llm.sh build); the LLM tests will skip"
	@# Kubernetes API server + controller manager from Debian's source package, built once into ~/.cache/awo
	@# (about 7 min on 2 cores, instant afterwards); the Kubernetes tests skip with the reason otherwise.
	@scripts/k8s.sh build >/dev/null || \
	  echo "note: the Kubernetes API server could not be built (scripts/k8s.sh build); the Kubernetes tests will skip"

test: lint services
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=15

bench: install
	$(PY) benchmarks/mining.py
	$(PY) benchmarks/features.py
	$(PY) benchmarks/api.py
	$(VENV)/bin/awo benchmark jit --out benchmarks/results/jit.json
	$(PY) benchmarks/jit_code.py
	$(PY) benchmarks/szz.py
	$(PY) benchmarks/gating.py
	$(PY) benchmarks/test_allocation.py
	$(PY) benchmarks/decisions.py
	$(PY) benchmarks/canary.py
	$(PY) benchmarks/nab.py
	$(PY) benchmarks/diagnosis.py
	$(PY) benchmarks/demo_agents.py
	$(PY) benchmarks/scale.py
	$(PY) benchmarks/security_features.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
