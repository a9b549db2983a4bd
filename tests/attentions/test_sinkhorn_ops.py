"""Log-domain balancing: ``prefix_logsumexp`` (the reference's fast prefix step) against torch.logcumsumexp, and the CPU
kernel of ``log_sinkhorn`` against the reference."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attentions import _fused_cpu
from attentions._blocks import kernel_mask
from attentions.sinkhorn.balancing import log_sinkhorn, prefix_logsumexp, reference_log_sinkhorn


def masked_lower(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).tril(-1)


def test_matches_logcumsumexp_in_value_and_gradient():
    """Against float64 logcumsumexp as the oracle: no worse than torch's own float32 logcumsumexp."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=g) * 20
    w = torch.randn(2, 3, 16, 16, generator=g)

    def value_and_grad(fn, dtype):
        t = x.to(dtype).requires_grad_()
        out = fn(t)
        (out * w.to(dtype)).sum().backward()
        return out.double(), t.grad.double()

    exact = value_and_grad(lambda t: torch.logcumsumexp(t, dim=-2), torch.float64)
    fast = value_and_grad(prefix_logsumexp, torch.float32)
    torch_f32 = value_and_grad(lambda t: torch.logcumsumexp(t, dim=-2), torch.float32)
    for mine, theirs, truth in zip(fast, torch_f32, exact, strict=True):
        torch.testing.assert_close(mine, truth, atol=1e-4, rtol=1e-5)
        assert (mine - truth).abs().max() <= (theirs - truth).abs().max() * 1.01


def test_float64_gradcheck():
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(prefix_logsumexp, (x,))


def test_prefix_far_below_the_column_maximum_falls_back_exactly():
    """Entries ~1,000 below a later maximum underflow in float64; the fallback keeps them exact."""
    x = torch.tensor([[-1000.0, 0.0], [-999.0, 1.0], [0.0, 2.0]]).reshape(1, 1, 3, 2)
    out = prefix_logsumexp(x)
    torch.testing.assert_close(out, torch.logcumsumexp(x, dim=-2))
    assert out[0, 0, 0, 0] == -1000.0


def test_masked_prefixes_stay_finite_and_causal_balancing_is_unchanged():
    """Strictly lower-triangular masks (causal Sinkhorn): every column starts with masked rows."""
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 4, 12, 12, generator=g) * 8).requires_grad_()
    mask = masked_lower(12)
    floor = torch.finfo(logits.dtype).min
    masked = logits.detach().masked_fill(~mask, floor)
    assert torch.isfinite(prefix_logsumexp(masked)).all()

    fast = log_sinkhorn(logits, 10, mask=mask, causal=True)
    x, reference = logits.detach().clone().requires_grad_(), None
    y = x.masked_fill(~mask, floor)
    for step in range(10):  # the balancing written with torch.logcumsumexp, as before the fast path
        y = y - (torch.logsumexp(y, -1, keepdim=True) if step % 2 == 0 else torch.logcumsumexp(y, dim=-2))
        y = y.masked_fill(~mask, floor)
    reference = y
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
    w = torch.randn(2, 4, 12, 12, generator=g)
    (fast.exp() * w).sum().backward()
    (reference.exp() * w).sum().backward()
    torch.testing.assert_close(logits.grad, x.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", ["plain", "padded", "causal", "causal_underflow"])
def test_hand_written_backward_matches_autograd(case):
    """``log_sinkhorn``'s CPU kernel (``_LogSinkhorn``) against the same balancing in autograd operators: values and
    gradients to float64 rounding, masked entries exactly the floor, and float64 gradcheck. Cases: no mask, a padding
    mask with fully masked rows and columns, the causal strictly lower mask, and a causal matrix whose prefix sits
    ~1,000 below its column's later maximum (beyond float64's exp: the reference falls back to ``logcumsumexp``)."""
    g = torch.Generator().manual_seed(2)
    n = 7
    logits = torch.randn(2, 3, n, n, generator=g, dtype=torch.float64) * 4
    mask, causal = None, case.startswith("causal")
    if case == "padded":
        live = torch.tensor([[True] * n, [True] * (n - 2) + [False] * 2])
        mask = (live[:, :, None] & live[:, None, :])[:, None]
    if causal:
        mask = masked_lower(n)
    if case == "causal_underflow":
        logits[0, 0, 3:, 1] = 1000.0  # column 1: rows 1-2 sit ~1,000 below the later maximum
    weights = torch.randn(2, 3, n, n, generator=g, dtype=torch.float64)

    def run(fn):
        x = logits.clone().requires_grad_()
        out = fn(x, 10, mask=mask, causal=causal)
        (out.exp() * weights).sum().backward()
        return out, x.grad

    (ours, our_grad), (theirs, their_grad) = run(log_sinkhorn), run(reference_log_sinkhorn)
    if _fused_cpu.usable(logits) is not None:  # the kernel ran, not the oracle
        assert "LogSinkhorn" in type(ours.grad_fn).__name__
    floor = torch.finfo(ours.dtype).min
    assert torch.equal(ours == floor, theirs == floor)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-10, atol=1e-12)
    x = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: log_sinkhorn(t, 6, mask=mask, causal=causal).exp(), (x,))


@pytest.fixture
def kernel():
    module = _fused_cpu.usable(torch.zeros(1))
    if module is None:
        pytest.skip("the CPU kernels are switched off or cannot be built here")
    return module


def test_balancing_is_one_kernel_call_each_way(kernel):
    """The regression gate of its speed, without timing: forward and backward of ten causal steps dispatch a handful
    of torch operators in all (the kernel's calls are not torch operators). Written in operators, the forward alone
    dispatched about 60 and the hand-written backward about 50."""
    x = torch.randn(1, 4, 16, 16, requires_grad=True)
    ops = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not any(free in str(func) for free in ("view", "detach", "expand", "as_strided", "slice", "alias")):
                ops.append(str(func))
            return func(*args, **(kwargs or {}))

    with Count():
        out = log_sinkhorn(x, 10, mask=masked_lower(16), causal=True)
        out.backward(torch.ones_like(out))
    assert len(ops) <= 12, ops


@pytest.mark.parametrize("causal", [False, True])
def test_without_gradients_the_kernel_keeps_no_trace_and_gives_the_same_values(kernel, causal):
    """Evaluation balances in two alternating buffers; the values are those of the recording (training) run."""
    x = torch.randn(2, 3, 9, 9) * 5
    mask = masked_lower(9) if causal else None
    with torch.no_grad():
        plain = log_sinkhorn(x, 7, mask=mask, causal=causal)
    recorded = log_sinkhorn(x.clone().requires_grad_(), 7, mask=mask, causal=causal)
    assert torch.equal(plain, recorded.detach())
    _, trace, prefix = kernel.log_sinkhorn_forward(x.reshape(6, 9, 9), 7, None, causal, False)
    assert trace.shape[0] == 2 and prefix.numel() == 0
    _, trace, prefix = kernel.log_sinkhorn_forward(x.reshape(6, 9, 9), 7, None, causal, True)  # what backward reads
    assert trace.shape == (7, 6, 9, 9) and prefix.shape[0] == (3 if causal else 0)


def test_kernel_refuses_a_mask_of_the_wrong_shape_by_name(kernel):
    x = torch.randn(4, 8, 8)
    with pytest.raises(RuntimeError, match=r"log_sinkhorn: expected a contiguous bool mask of shape \(1 or 4, 8, 8\)"):
        kernel.log_sinkhorn_forward(x, 4, torch.ones(2, 8, 8, dtype=torch.bool), False, True)
    with pytest.raises(RuntimeError, match=r"log_sinkhorn: expected contiguous \(matrices, n, n\)"):
        kernel.log_sinkhorn_forward(torch.randn(4, 8, 7), 4, None, False, True)


def test_a_mask_shared_by_every_matrix_is_passed_once():
    """(n, n) and (1, 1, n, n) masks reach the kernel as one (1, n, n) mask; a per-batch mask is expanded over heads."""
    lead, last = (2, 3), (5, 5)
    lower = masked_lower(5)
    assert kernel_mask(lower, lead, last).shape == (1, 5, 5)
    assert kernel_mask(lower[None, None], lead, last).shape == (1, 5, 5)
    live = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    per_batch = (live[:, :, None] & live[:, None, :])[:, None]  # (2, 1, 5, 5)
    flat = kernel_mask(per_batch, lead, last)
    assert flat.shape == (6, 5, 5) and torch.equal(flat[3], per_batch[1, 0]) and torch.equal(flat[2], per_batch[0, 0])
