# Two commands for a newcomer: `make demo` and `make test`. Everything else hangs off `install`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONUNBUFFERED := 1

.PHONY: install browser demo test bench bench-check bench-baseline lint clean

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

# The full sweep: pytest-benchmark (1K-16K, the Sinkhorn family against vanilla and the public peer, scheduler
# throughput; the model-level table at 1K-4K with its targets), saved under .benchmarks/. The peer package is a benchmark-only extra.
bench: install
	$(PIP) install -q -e '.[bench]'
	$(PY) -m pytest -q -s tests/bench --benchmark-only --benchmark-autosave

# Every plugin at short lengths against the committed baseline: time as a ratio to vanilla in the same run,
# memory in bytes (+10% + 64 KiB), memory exponent <= 1.3 for block methods. Also part of `make test`.
# The model-level section (`bench --model`: whole training steps of every causal plugin) is checked the same way.
BENCH_LENGTHS ?= 256 512 1024
MODEL_LENGTHS ?= 512 1024
bench-check: install
	$(VENV)/bin/attnbench bench --lengths $(BENCH_LENGTHS) --repeats 5 --check tests/bench/baseline.json
	$(VENV)/bin/attnbench bench --model --lengths $(MODEL_LENGTHS) --repeats 5 --check tests/bench/baseline.json

# Re-record the baseline after an intended change (commit the new file with the change that explains it).
bench-baseline: install
	$(VENV)/bin/attnbench bench --lengths $(BENCH_LENGTHS) --repeats 5 --save-baseline tests/bench/baseline.json
	$(VENV)/bin/attnbench bench --model --lengths $(MODEL_LENGTHS) --repeats 5 --save-baseline tests/bench/baseline.json

lint: install
	$(VENV)/bin/ruff check attentions tasks harness tests
	$(VENV)/bin/ruff format --check attentions tasks harness tests

clean:
	rm -rf $(VENV) results/*.parquet reports/*.html
