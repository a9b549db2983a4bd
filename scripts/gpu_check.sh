#!/usr/bin/env bash
# The GPU checks in one go, on a machine whose python3 already has a CUDA build of torch (the project's .venv pins
# the CPU build, so this does not use it): the CUDA tests (every plugin in fp32 and bf16, causality on the GPU, a
# DeepSpeed trial in bf16 over nccl that checkpoints and resumes), sinkhorn's Triton balancing kernels (their tests on
# CUDA, bf16 against fp32, a timing against the operators), then the attention and model-level benchmarks on
# cuda/bf16, eager and compiled. Each step has its own time limit and log, so one that hangs or fails does not hide
# the others; a limit of 0 skips the step.
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

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to OUT/NAME.log, remember the exit status
    local name=$1 limit=$2
    shift 2
    [ "$limit" = 0 ] && return
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
step cuda_tests "${TESTS_LIMIT:-200}" "$PY" -m pytest -q -rfE --tb=short -p no:cacheprovider \
    --junitxml="$out/cuda_tests.xml" tests/harness/test_cuda.py tests/harness/test_trainer.py -k cuda
# sinkhorn's Triton balancing kernels compiled for the GPU: the interpreter tests' file on CUDA tensors (values and
# gradients against the operator reference), then bf16 against fp32 and a timing against the operators
step triton_kernels "${TRITON_LIMIT:-180}" "$PY" -m pytest -q -rfE --tb=short -p no:cacheprovider \
    --junitxml="$out/triton_kernels.xml" tests/attentions/test_triton_balancing.py
step triton_balancing "${TRITON_LIMIT:-180}" "$PY" scripts/triton_balancing_check.py
scratch=$(mktemp -d)
step bench_attention "${BENCH_LIMIT:-120}" "$PY" -m harness.cli bench --device cuda --results "$scratch" \
    --lengths ${LENGTHS:-1024 4096 16384} --repeats 5
# sinkhorn's batched path (ATTNBENCH_FLEX_CUDA=0) against its FlexAttention path below, on the same machine
ATTNBENCH_FLEX_CUDA=0 step bench_attention_batched "${BENCH_LIMIT:-120}" "$PY" -m harness.cli bench --device cuda \
    --results "$scratch" --attentions sinkhorn --lengths ${LENGTHS:-1024 4096 16384} --repeats 5
step bench_model "${MODEL_LIMIT:-90}" "$PY" -m harness.cli bench --model --device cuda --results "$scratch" \
    --lengths ${MODEL_LENGTHS:-1024 2048 4096} --repeats 5
ATTNBENCH_FLEX_CUDA=0 step bench_model_batched "${MODEL_LIMIT:-90}" "$PY" -m harness.cli bench --model --device cuda \
    --results "$scratch" --attentions local sinkhorn --lengths ${MODEL_LENGTHS:-1024 2048 4096} --repeats 5
# torch.compile on the same machine, against the eager run above (each model compiles in its untimed warm-up step)
step bench_model_compiled "${COMPILE_LIMIT:-240}" "$PY" -m harness.cli bench --model --compile --device cuda \
    --results "$scratch" --attentions ${COMPILE_ATTENTIONS:-local sinkhorn} --lengths ${COMPILE_LENGTHS:-1024 4096} \
    --repeats 5
tar -C "$scratch" -czf "$out/bench_store.tar.gz" . || true  # the Parquet store itself, for `attnbench report`
cat "$out/summary.txt"
! grep " rc=" "$out/summary.txt" | grep -qv " rc=0 "
