# Two commands for a newcomer: `make demo` and `make test`. Everything else hangs off `install`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONUNBUFFERED := 1

.PHONY: install browser demo test bench bench-check lint clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build on these machines; an unpinned torch pulls CUDA wheels.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/attnbench run smoke --results results
	$(VENV)/bin/attnbench report --results results --out reports/smoke.html

# Debian's chromium for the report's browser test (driven by playwright; never `playwright install`: no downloads).
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

test: install browser
	$(PY) -m pytest -q tests --ignore=tests/bench

bench: install
	$(PY) -m pytest -q tests/bench --benchmark-only --benchmark-autosave

lint: install
	$(VENV)/bin/ruff check attentions tasks harness tests
	$(VENV)/bin/ruff format --check attentions tasks harness tests

clean:
	rm -rf $(VENV) results/*.parquet reports/*.html
