#!/usr/bin/env bash
# The GPU checks in one go, on a machine whose python3 already has a CUDA build of torch (the project's .venv pins
# the CPU build, so this does not use it): the CUDA tests (every plugin in fp32 and bf16, causality on the GPU, a
# DeepSpeed trial in bf16 over nccl that checkpoints and resumes), sinkhorn's Triton balancing kernels (their tests on
# CUDA, bf16 against fp32, a timing against the operators), then the attention benchmark on cuda/bf16 (batch 1 and 8,
# 1K to 64K: forward and forward+backward apart, GPU idle share, roofline share), the model-level table at batch 8,
# eager, compiled and with CUDA graphs (train.compile: reduce-overhead), and the batched-path comparisons.
# Each step has its own time limit and log, so one that hangs or fails does not hide the others; a limit of 0 skips
# the step. All steps together stay within TOTAL_LIMIT seconds (default 540): a step gets at most what is left, and
# one with under 20 seconds left is skipped (and counted as failed in the summary).
#
#   scripts/gpu_check.sh [OUTDIR]        (default: gpu-check/; logs, JUnit XML and the benchmark store land there)
#
# Packages the machine lacks can come as wheels in .whl/ (installed into a scratch folder first, nothing system-wide).
# Ray is not needed: these checks call the trainer and the benchmarks directly, not the scheduler.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
mkdir -p "$out"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The CPU side of these checks is the oracle only; skip compiling the CPU kernels (tests/attentions covers them).
export ATTNBENCH_FUSED_CPU="${ATTNBENCH_FUSED_CPU:-0}"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/attnbench-site \
        .whl/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/attnbench-site"
fi

total="${TOTAL_LIMIT:-540}"
step() {  # step NAME SECONDS COMMAND...: run with a limit, log to OUT/NAME.log, remember the exit status
    local name=$1 limit=$2
    shift 2
    [ "$limit" = 0 ] && return
    local left=$((total - SECONDS))
    if [ "$left" -lt 20 ]; then
        echo "$name rc=skipped (TOTAL_LIMIT=${total}s spent)" | tee -a "$out/summary.txt"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$out/summary.txt"
    tail -n "${TAIL:-25}" "$out/$name.log"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} | tee "$out/summary.txt"
step cuda_tests "${TESTS_LIMIT:-150}" "$PY" -m pytest -q -rfE --tb=short -p no:cacheprovider \
    --junitxml="$out/cuda_tests.xml" tests/harness/test_cuda.py tests/harness/test_trainer.py -k cuda
# Every Triton kernel compiled for the GPU: the interpreter tests' files on CUDA tensors (values and gradients against
# the operator references): balancing (one-program and tiled), Sinkformer without L x L, SBM's graph draw; then
# balancing in bf16 against fp32 and a timing against the operators
step triton_kernels "${TRITON_LIMIT:-90}" "$PY" -m pytest -q -rfE --tb=short -p no:cacheprovider \
    --junitxml="$out/triton_kernels.xml" tests/attentions/test_triton_balancing.py \
    tests/attentions/test_sinkformer_triton.py tests/attentions/test_sbm_triton.py
step triton_balancing "${TRITON_LIMIT:-60}" "$PY" scripts/triton_balancing_check.py
scratch=$(mktemp -d)
# Each attention alone: CUDA-event times of the forward and the forward+backward (warm-up, L2 flushed before every
# repeat), the GPU's idle share (profiler) and the share of the card's bf16 roofline; a case that runs out of memory
# is skipped with a warning. One step per batch, so a slow batch 8 does not lose the batch 1 rows.
step bench_attention "${BENCH_LIMIT:-120}" "$PY" -m harness.cli bench --device cuda --results "$scratch" \
    --batch 1 --lengths ${LENGTHS:-1024 4096 16384 65536} --repeats 5 --case-limit "${CASE_LIMIT:-8}"
step bench_attention_b8 "${BENCH_LIMIT:-120}" "$PY" -m harness.cli bench --device cuda --results "$scratch" \
    --batch 8 --lengths ${LENGTHS:-1024 4096 16384 65536} --repeats 5 --case-limit "${CASE_LIMIT:-8}"
# The model-level table at batch 8: eager, torch.compile, and CUDA graphs (each model compiles in its untimed
# warm-up step), on the same machine so the three compare.
step bench_model "${MODEL_LIMIT:-90}" "$PY" -m harness.cli bench --model --device cuda --results "$scratch" \
    --batch 8 --lengths ${MODEL_LENGTHS:-1024 4096 16384} --repeats 5
step bench_model_compiled "${COMPILE_LIMIT:-75}" "$PY" -m harness.cli bench --model --compile --device cuda \
    --results "$scratch" --batch 8 --attentions ${COMPILE_ATTENTIONS:-local sinkhorn} \
    --lengths ${COMPILE_LENGTHS:-1024 4096} --repeats 5
step bench_model_graphs "${COMPILE_LIMIT:-75}" "$PY" -m harness.cli bench --model --compile reduce-overhead \
    --device cuda --results "$scratch" --batch 8 --attentions ${COMPILE_ATTENTIONS:-local sinkhorn} \
    --lengths ${COMPILE_LENGTHS:-1024 4096} --repeats 5
# sinkhorn's batched path (ATTNBENCH_FLEX_CUDA=0) against its FlexAttention path above, on the same machine
ATTNBENCH_FLEX_CUDA=0 step bench_attention_batched "${BATCHED_LIMIT:-45}" "$PY" -m harness.cli bench --device cuda \
    --results "$scratch" --attentions sinkhorn --lengths ${BATCHED_LENGTHS:-1024 4096 16384} --repeats 5
ATTNBENCH_FLEX_CUDA=0 step bench_model_batched "${BATCHED_LIMIT:-45}" "$PY" -m harness.cli bench --model \
    --device cuda --results "$scratch" --batch 8 --attentions local sinkhorn --lengths ${COMPILE_LENGTHS:-1024 4096} \
    --repeats 5
tar -C "$scratch" -czf "$out/bench_store.tar.gz" . || true  # the Parquet store itself, for `attnbench report`
cat "$out/summary.txt"
! grep " rc=" "$out/summary.txt" | grep -qv " rc=0 "
