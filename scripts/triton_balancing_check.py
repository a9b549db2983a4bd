"""The Triton balancing kernels on a GPU: the tiled kernels at their default tile against the operator reference in
fp32, bf16 against fp32, then a timing of ``log_sinkhorn`` against its operator reference (forward + backward, 10 steps,
causal and not). Run by ``scripts/gpu_check.sh``; exits non-zero on a tolerance miss.

bf16 tolerance: the kernels compute in fp32 and round only their output and gradient to bf16, so the balanced matrix
exp(out) must be within 0.02 (absolute) of the fp32 run on the same (bf16-rounded) input, and the gradient within 5% of
the fp32 gradient's largest entry.
"""

from __future__ import annotations

import sys

import torch

from attentions.sinkhorn import balancing, triton_balancing, triton_tiled_balancing
from attentions.sinkhorn.balancing import log_sinkhorn, reference_log_sinkhorn

STEPS = 10


def inputs(n: int, causal: bool, dtype: torch.dtype, matrices: int = 32):
    g = torch.Generator(device="cuda").manual_seed(n)
    x = torch.randn(matrices, n, n, device="cuda", generator=g) * 3
    mask = torch.ones(n, n, dtype=torch.bool, device="cuda").tril(-1) if causal else None
    return x.to(dtype), mask


def kernel(n: int):
    """The kernel ``log_sinkhorn`` picks for n (the tiled one above ``MAX_N``)."""
    return (
        triton_balancing.triton_log_sinkhorn
        if n <= triton_balancing.MAX_N
        else triton_tiled_balancing.tiled_log_sinkhorn
    )


def tiled_against_reference() -> bool:
    """The tiled kernels compiled at their default tile, in fp32: values to 1e-5 and gradients to 1e-4 (relative and
    absolute) of the operator reference, at sizes that are and are not multiples of the tile."""
    ok = True
    for n in (129, 200, 1000):
        for causal in (False, True):
            x, mask = inputs(n, causal, torch.float32, matrices=4)
            w = torch.randn(x.shape, device="cuda")
            results = []
            for fn in (triton_tiled_balancing.tiled_log_sinkhorn, reference_log_sinkhorn):
                t = x.clone().requires_grad_()
                out = fn(t, STEPS, mask=mask, causal=causal)
                (out.exp() * w).sum().backward()
                results.append((out.detach(), t.grad))
            (ours, our_grad), (theirs, their_grad) = results
            dv = (ours - theirs).abs().max().item()
            dg = (our_grad - their_grad).abs().max().item()
            good = torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5)
            good &= torch.allclose(our_grad, their_grad, rtol=1e-4, atol=1e-4)
            ok &= good
            print(f"tiled vs reference fp32 n={n} causal={causal}: max |dout| {dv:.2e}, max |dgrad| {dg:.2e}", end="")
            print("" if good else "  FAIL")
    return ok


def bf16_against_fp32() -> bool:
    ok = True
    for n in (16, 64, 100, 128, 256):
        for causal in (False, True):
            x, mask = inputs(n, causal, torch.bfloat16)
            w = torch.randn(x.shape, device="cuda")
            results = []
            for dtype in (torch.float32, torch.bfloat16):
                t = x.to(dtype).requires_grad_()
                out = kernel(n)(t, STEPS, mask=mask, causal=causal)
                (out.float().exp() * w).sum().backward()
                results.append((out.float().exp(), t.grad.float()))
            (p32, g32), (p16, g16) = results
            dp = (p16 - p32).abs().max().item()
            dg = (g16 - g32).abs().max().item() / max(g32.abs().max().item(), 1e-30)
            good = dp <= 0.02 and dg <= 0.05
            ok &= good
            print(f"bf16 vs fp32 n={n} causal={causal}: max |dP| {dp:.2e}, max |dgrad| / max |grad| {dg:.2e}", end="")
            print("" if good else "  FAIL")
    return ok


def timed(fn, x, mask, causal, repeats: int = 20) -> float:
    """Milliseconds per forward + backward, CUDA events, after a warm-up."""
    w = torch.randn_like(x)
    for _ in range(3):
        t = x.clone().requires_grad_()
        (fn(t, STEPS, mask=mask, causal=causal).exp() * w).sum().backward()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        t = x.clone().requires_grad_()
        (fn(t, STEPS, mask=mask, causal=causal).exp() * w).sum().backward()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def timing() -> None:
    print(f"log_sinkhorn fwd+bwd, {STEPS} steps, 32 matrices fp32 ({torch.cuda.get_device_name()}), ms:")
    for n in (64, 128, 256, 1024):
        for causal in (False, True):
            x, mask = inputs(n, causal, torch.float32)
            chosen = balancing._triton_kernel(x)
            path = "operators" if chosen is None else chosen.__name__
            fused = timed(log_sinkhorn, x, mask, causal)
            reference = timed(reference_log_sinkhorn, x, mask, causal)
            print(f"  n={n:5d} causal={causal!s:5}  log_sinkhorn [{path}] {fused:8.3f}  reference {reference:8.3f}")


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("triton_balancing_check: needs a CUDA device")
    passed = tiled_against_reference()
    passed &= bf16_against_fp32()
    timing()
    sys.exit(0 if passed else 1)
