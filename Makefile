# Every target sets itself up: `make demo`, `make test` and `make app` work on a fresh clone.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTHON ?= python3

# No telemetry from Ploomber, whatever runs it.
export PLOOMBER_STATS_ENABLED := false
export PLOOMBER_VERSION_CHECK_DISABLED := 1

.DEFAULT_GOAL := help
.PHONY: help install demo run test test-fast lint format clean app bench bench-quick

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv with the pinned dependencies and the toolkit package

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip >/dev/null
	$(PY) -m pip install -q --upgrade uv
	# Compiled bytecode: where PYTHONDONTWRITEBYTECODE is set (containers, CI) every process
	# and every notebook kernel would otherwise compile each module it imports, every time.
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -r requirements.lock
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	# Privacy in every interpreter of the venv, including a bare `ploomber build`.
	echo "import os; os.environ.setdefault('PLOOMBER_STATS_ENABLED', 'false'); os.environ.setdefault('PLOOMBER_VERSION_CHECK_DISABLED', '1')" \
	  > $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/toolkit_privacy.pth
	touch $(STAMP)

demo: install ## Write the synthetic demo data (through last week), plan next month for the default market
	$(VENV)/bin/toolkit demo-data
	$(VENV)/bin/toolkit run --patch period=$$($(PY) -c 'import datetime as d; t = d.date.today(); print(f"{t.year + t.month // 12}-{t.month % 12 + 1:02d}")')

app: install ## Serve the app on http://127.0.0.1:8501 with a worker for its runs (demo data if none)
	@if [ -z "$$(cd app && ../$(PY) -c 'from logic import page_data; from toolkit.data import storage; print(*page_data.markets_with_data(storage.root()))')" ]; then \
	  echo "The store has no sales data yet: writing the SYNTHETIC demo data."; \
	  $(VENV)/bin/toolkit demo-data; \
	fi
	@# One local worker runs what the app queues; it stops with the app (a run in flight is
	@# handed back to the queue and resumed by the next worker), leaving no process behind.
	@$(VENV)/bin/toolkit worker & worker=$$!; \
	  trap 'kill -TERM $$worker 2>/dev/null; wait $$worker' EXIT; \
	  $(VENV)/bin/streamlit run app/serve.py --server.address 127.0.0.1

test: install ## Run the test suite
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-fast: install ## The quick loop: every test not marked slow (a few minutes)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" $(PYTEST_ARGS)

bench: install ## Measure speed as ratios (long): benchmarks/results.md and results.png
	$(PY) -m benchmarks $(BENCH_ARGS)

bench-quick: install ## A small version of bench, a few minutes: benchmarks/results-quick.md
	$(PY) -m benchmarks --quick $(BENCH_ARGS)

lint: install ## Check style with ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## Format with ruff
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

lock: ## Re-pin dependencies into requirements.lock (needs uv)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra app --extra scale \
	  --python-version 3.11 --no-emit-index-url --no-header -o requirements.lock

clean: ## Remove the local build workspace (not the store)
	rm -rf .toolkit
