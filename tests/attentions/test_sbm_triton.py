"""SBM's device path: the one-launch graph draw (``attentions/_sbm_triton.py``) equals the torch-operator draw bit for
bit with the same totals, and the forward and backward routed through it (the draw, then batched dense graph
attention) equal the host-driven dense path's, without reading anything back to the host.

Without a GPU, ``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` and these run on CPU tensors under Triton's
interpreter (the plugin's routing is patched to take the device path there); with one, on CUDA tensors.
"""

from __future__ import annotations

import os

import pytest
import torch

import attentions
from attentions import _fused_cpu, sbm

pytest.importorskip("triton")

HEADS, DIM = 2, 8


@pytest.fixture(scope="module")
def device() -> str:
    """ "cuda" with a GPU, "cpu" under the interpreter (``tests/conftest.py`` sets it before triton is imported)."""
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and TRITON_INTERPRET is not 1: the Triton kernel cannot run here")
    return "cpu"


@pytest.fixture(scope="module")
def kernel(device):
    from attentions import _sbm_triton

    return _sbm_triton


def memberships(length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(Y B, Z) whose rates run from about 0 to 1.9: both branches of p = 1 - exp(-rate) in the kernel."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(2, HEADS, length, 3, generator=g) * 0.8 for _ in range(2))


def padding(length: int) -> torch.Tensor:
    mask = torch.ones(2, length, dtype=torch.bool)
    mask[0, length - 5 :] = False
    mask[1, :3] = False
    return mask


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_kernel_draws_the_reference_graph_with_its_totals(training, causal, padded, kernel, device, monkeypatch):
    """L = 37 in 16 x 16 tiles (partial edge tiles, causal tiles above the diagonal skipped), a seed above 2^32."""
    monkeypatch.setattr(_fused_cpu, "usable", lambda x: None)  # dense_graph draws in torch operators
    length, seed = 37, 0x1234_5678_9ABC
    yb, z = (t.to(device) for t in memberships(length))
    valid = (padding(length) if padded else torch.ones(2, length, dtype=torch.bool)).to(device)
    graph, totals = kernel.draw_graph(yb, z, valid if padded else None, causal, training, seed, tile=16)
    reference, p_sum, kept, edges = sbm.dense_graph(yb, z, valid, causal, training, seed)
    assert graph.dtype == torch.bool and totals.dtype == torch.float64
    assert torch.equal(graph, reference)
    assert 0.05 < graph.float().mean() < 0.95, "a graph neither empty nor full"
    assert graph.diagonal(dim1=-2, dim2=-1).all(), "every query keeps its self-edge"
    assert totals[1:].tolist() == [kept, edges]
    assert float(totals[0]) == pytest.approx(p_sum, rel=1e-6)
    if training:
        assert not torch.equal(kernel.draw_graph(yb, z, None, causal, True, seed + 1, tile=16)[0], graph)


def run_sbm(causal: bool, training: bool, device_path: bool, device: str, monkeypatch) -> tuple:
    """Output, extra loss, edge fraction and gradients (q, k, v, C, MLP) of one padded forward and backward."""
    monkeypatch.setattr(sbm, "_device_path", lambda x: device_path)
    torch.manual_seed(0)
    attn = attentions.build("sbm", heads=HEADS, head_dim=DIM, max_len=32, causal=causal, clusters=3, density=0.2)
    attn.train(training).to(device)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, HEADS, 19, DIM, generator=g).to(device).requires_grad_() for _ in range(3))
    mask = padding(19).to(device)
    target = torch.randn(2, HEADS, 19, DIM, generator=g).to(device) * mask[:, None, :, None]
    torch.manual_seed(3)  # the graph's seed
    out = attn(q, k, v, padding_mask=mask)
    fraction = attn._edge_fraction
    loss = (out * target).sum() + attn.extra_loss
    params = (q, k, v, attn.cluster_embeddings, attn.mlp[0].weight, attn.mlp[2].weight)
    grads = torch.autograd.grad(loss, params)
    real = mask[:, None, :, None].expand_as(out)
    return out.detach()[real], attn.extra_loss.detach(), fraction, grads


@pytest.mark.parametrize(
    ("causal", "training", "split"), [(False, True, False), (True, True, True), (True, False, False)]
)
def test_device_path_equals_the_dense_path(causal, training, split, kernel, device, monkeypatch):
    """Routed through the kernel and the batched attention (``split``: rows in several blocks), the forward and
    backward give the host-driven dense path's output, density loss, edge fraction and gradients."""
    draws = []
    draw = kernel.draw_graph
    monkeypatch.setattr(kernel, "draw_graph", lambda *a, **kw: draws.append(1) or draw(*a, tile=16, **kw))
    monkeypatch.setattr(sbm.SBMAttention, "dense_above", 0.0)  # the host-driven path attends densely too
    if split:
        monkeypatch.setattr(sbm, "_BATCHED_BLOCK", 2 * HEADS * 19 * 5)  # rows in blocks of 5
    out, extra, fraction, grads = run_sbm(causal, training, True, device, monkeypatch)
    assert draws == [1], "the forward did not take the kernel"
    assert isinstance(fraction, torch.Tensor), "the edge fraction stays on the device"
    want_out, want_extra, want_fraction, want_grads = run_sbm(causal, training, False, device, monkeypatch)
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(extra, want_extra)
    assert float(fraction) == pytest.approx(float(want_fraction))
    for got, want in zip(grads, want_grads, strict=True):
        assert want.abs().sum() > 0
        torch.testing.assert_close(got, want)


def test_device_path_reads_nothing_back_to_the_host(kernel, device, monkeypatch):
    """Forward and backward on the device path never turn a tensor into a Python value (each would be a host sync
    on CUDA; the graph's seed comes from torch's CPU generator, which is not); the edge fraction is read only by
    ``trial_metrics``."""
    monkeypatch.setattr(sbm, "_device_path", lambda x: True)
    monkeypatch.setattr(sbm, "draw_seed", lambda: 12345)
    torch.manual_seed(0)
    attn = attentions.build("sbm", heads=HEADS, head_dim=DIM, max_len=32, causal=True, clusters=3).train().to(device)
    q, k, v = (torch.randn(2, HEADS, 12, DIM, device=device).requires_grad_() for _ in range(3))
    mask = padding(12).to(device)

    def host_read(*args, **kwargs):
        raise AssertionError("a tensor was read back to the host")

    with monkeypatch.context() as reads:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
            reads.setattr(torch.Tensor, name, host_read)
        (attn(q, k, v, padding_mask=mask).sum() + attn.extra_loss).backward()
    assert 0 < attn.trial_metrics()["edge_fraction"] <= 1
    assert q.grad.abs().sum() > 0 and attn.cluster_embeddings.grad.abs().sum() > 0


def test_only_cuda_takes_the_device_path_unless_switched_off(monkeypatch):
    assert not sbm._device_path(torch.zeros(1))
    if torch.cuda.is_available():
        assert sbm._device_path(torch.zeros(1, device="cuda"))
        monkeypatch.setenv("ATTNBENCH_TRITON_CUDA", "0")
        assert not sbm._device_path(torch.zeros(1, device="cuda"))
