"""Analytic matrix-product FLOPs of each plugin's forward and forward + backward, and the bf16 peaks of known GPUs.

The share of the roofline is the attained rate (the method's FLOPs over the measured time) over the device's dense
bf16 peak. The count is the method's: the products its formulation needs at the benchmark's shape (non-causal, no
padding), computed dense where the plugin computes them dense (``sparse``'s masked summary columns, ``routing``'s
whole windows), so it equals what ``torch.utils.flop_counter.FlopCounterMode`` sees in the plugin's plain-torch path.
Elementwise work (softmax, balancing, Gumbel noise, pooling) is left out: it costs memory traffic, not FLOPs, and
is exactly what the share shows the plugin spending time on. The backward of a product costs two products (one per
input gradient); products whose inputs need no gradient (routing's similarities, its centroid update) count once.
A plugin whose FLOPs depend on the data (``sbm``'s sampled graph) has no count.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, from NVIDIA's data sheets; the first name contained in the
# device's name wins, so the specific names come before the generic ones.
BF16_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200 NVL", 835e12),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100", 989e12),  # SXM
)


def bf16_peak(device_name: str, override_tflops: float | None = None) -> float | None:
    """The dense bf16 peak of a GPU by its name (``torch.cuda.get_device_name``), or ``override_tflops`` * 1e12;
    None for a device the table does not know."""
    if override_tflops is not None:
        if not override_tflops > 0:
            raise ValueError(f"--peak-tflops must be > 0, got {override_tflops!r}")
        return override_tflops * 1e12
    return next((peak for name, peak in BF16_PEAK_FLOPS if name.lower() in device_name.lower()), None)


def _blocks(module: nn.Module, length: int) -> tuple[int, int]:
    block = min(module.block_size, length)
    return -(-length // block), block


def _sortnet(module: nn.Module, n: int) -> float:
    """The sort net on n pooled blocks: one (n x in) @ (in x out) product per layer, the last one's out sliced to n."""
    weights = list(module.sortnet.weights)
    return sum(2 * n * w.shape[1] * (n if i == len(weights) - 1 else w.shape[2]) for i, w in enumerate(weights))


def _vanilla(module: nn.Module, length: int, dim: int) -> tuple[float, float]:
    return 4 * length * length * dim, 0.0


def _local(module: nn.Module, length: int, dim: int) -> tuple[float, float]:
    n, b = _blocks(module, length)
    return 4 * n * b * b * dim, 0.0


def _sparse(module: nn.Module, length: int, dim: int) -> tuple[float, float]:
    n, b = _blocks(module, length)
    stride = min(module.stride, b)
    return 4 * n * b * dim * (b + n * stride), 0.0


def _sinkhorn(module: nn.Module, length: int, dim: int) -> tuple[float, float]:
    """Sort net, sorting K and V ((n x n) @ (n x b*D) each) and, per query block, scores and outputs over its sorted
    and its own block (2b keys)."""
    n, b = _blocks(module, length)
    return _sortnet(module, n) + 2 * 2 * n * n * b * dim + 8 * n * b * b * dim, 0.0


def _sortcut(module: nn.Module, length: int, dim: int) -> tuple[float, float]:
    """Sort net, the first ``budget`` sorted blocks of K and V, and every query over those budget * b keys."""
    n, b = _blocks(module, length)
    kept = min(module.budget, n)
    return _sortnet(module, n) + 2 * 2 * kept * n * b * dim + 4 * n * b * kept * b * dim, 0.0


def _mixture(module: nn.Module, length: int, dim: int) -> tuple[float, float]:
    return _sinkhorn(module, length, dim)[0] + _vanilla(module, length, dim)[0], 0.0


def _routing(module: nn.Module, length: int, dim: int) -> tuple[float, float]:
    """Attention inside each cluster's window (w queries x w keys); the similarities of queries and keys to the
    centroids and the centroid update (one-hot sums) need no input gradient."""
    clusters, w = module.clusters, min(module.window, length)
    similarities = 2 * 2 * length * clusters * dim
    update = 2 * 2 * length * clusters * dim if module.training else 0
    return 4 * clusters * w * w * dim, similarities + update


COUNTS: dict[str, Callable[[nn.Module, int, int], tuple[float, float]]] = {
    "vanilla": _vanilla,
    "local": _local,
    "sparse": _sparse,
    "sinkhorn": _sinkhorn,
    "sortcut": _sortcut,
    "sinkhorn_mixture": _mixture,
    "sinkformer": _vanilla,  # dense scores and outputs; the balancing between them is elementwise
    "routing": _routing,
}


def attention_flops(name: str, module: nn.Module, length: int, *, batch: int, heads: int, head_dim: int):
    """(forward, forward + backward) FLOPs of plugin ``name`` (built as ``module``) on (batch, heads, length,
    head_dim) inputs, non-causal; None for a plugin without a well-defined count."""
    count = COUNTS.get(name)
    if count is None or getattr(module, "causal", False):
        return None
    trained, fixed = count(module, length, head_dim)
    scale = batch * heads
    return scale * (trained + fixed), scale * (3 * trained + fixed)
