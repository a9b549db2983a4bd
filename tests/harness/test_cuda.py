"""The CUDA paths (skipped without a GPU): every plugin in bfloat16 on the GPU, causality there, and a trial that
trains in bf16 over nccl, checkpoints and resumes. Run on a GPU machine: ``pytest tests/harness/test_cuda.py``."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import attentions
import tasks
from harness.running.grid import Trial

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
HEADS, DIM, MAX_LEN = 2, 8, 96
SMALL = {"block_size": 8, "stride": 2, "budget": 2, "clusters": 3, "window": 8}
CASES = [(n, c) for n in attentions.names() for c in ([False, True] if attentions.get(n).supports_causal else [False])]
DISCRETE = {"routing", "sbm"}  # outputs hinge on argmax / threshold decisions
CAUSAL = [n for n in attentions.names() if attentions.get(n).supports_causal]


def make(name: str, causal: bool) -> attentions.Attention:
    params = {k: v for k, v in SMALL.items() if k in attentions.parameters(name)}
    torch.manual_seed(0)
    return attentions.build(name, heads=HEADS, head_dim=DIM, max_len=MAX_LEN, causal=causal, **params)


def qkv(length: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2, HEADS, length, DIM, generator=g) for _ in range(3)]


def sort_trial(train: dict, **model) -> dict:
    """The config of a small sinkhorn sort trial on one GPU; ``train`` and ``model`` override the defaults."""
    spec = tasks.build("sort", scale="smoke").spec
    defaults = dict(steps=16, batch_size=8, lr=1e-3, warmup=0, weight_decay=0.0, grad_clip=1.0, eval_batch_size=64)
    defaults |= dict(eval_every=0, checkpoint_every=0, select="last", keep_checkpoints=False, deepspeed={})
    return Trial(
        grid="cuda",
        task="sort",
        task_params={"train_size": 256, "test_size": 16},
        scale="smoke",
        seed=0,
        attention="sinkhorn",
        params={"block_size": 4},
        model={**dataclasses.asdict(spec.model), **model},
        train=defaults | train,
        resources=dict(cpus=1, gpus=1, workers=1, max_retries=0),
    ).config()


class Crash(Exception):
    pass


@pytest.mark.parametrize("name,causal", CASES)
def test_plugin_on_cuda_matches_cpu_in_fp32_and_stays_close_in_bf16(name, causal):
    cpu = make(name, causal).eval()
    gpu = make(name, causal).eval().cuda()
    q, k, v = qkv(40)
    reference = cpu(q, k, v)
    on_gpu = gpu(q.cuda(), k.cuda(), v.cuda()).cpu()
    torch.testing.assert_close(on_gpu, reference, rtol=1e-3, atol=2e-4)
    low = gpu.to(torch.bfloat16)
    in_bf16 = low(*(t.cuda().bfloat16() for t in (q, k, v))).float().cpu()
    assert torch.isfinite(in_bf16).all()
    if name in DISCRETE:
        return  # bf16 rounding flips some cluster assignments / sampled edges: a different, equally valid output
    assert (in_bf16 - reference).abs().max() <= 0.05 * reference.abs().max() + 0.02


@pytest.mark.parametrize("name,causal", CASES)
def test_plugin_trains_on_cuda_in_bf16(name, causal):
    attn = make(name, causal).train().cuda().to(torch.bfloat16)
    q, k, v = (t.cuda().bfloat16().requires_grad_() for t in qkv(40))
    y = attn(q, k, v)
    loss = y.float().square().mean() + (attn.extra_loss.float() if attn.extra_loss is not None else 0)
    loss.backward()
    assert torch.isfinite(y).all() and all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("causal", [False, True])
def test_sbm_fastrg_path_trains_on_cuda_in_bf16(causal, monkeypatch):
    """The fastRG sampler (sparse expected graphs) on the GPU: edges only where allowed, finite bf16 gradients."""
    from attentions import sbm

    monkeypatch.setenv("ATTNBENCH_TRITON_CUDA", "0")  # the host-driven forward: the device path never takes fastRG
    attn = make("sbm", causal).train().cuda().to(torch.bfloat16)
    monkeypatch.setattr(attn, "fastrg_below", 2.0)  # every training forward samples by fastRG
    monkeypatch.setattr(sbm, "_probability", lambda *a: pytest.fail("formed the L x L probabilities"))
    q, k, v = (t.cuda().bfloat16().requires_grad_() for t in qkv(40))
    y = attn(q, k, v)
    (y.float().square().mean() + attn.extra_loss.float()).backward()
    assert torch.isfinite(y).all() and all(torch.isfinite(t.grad).all() for t in (q, k, v))
    yb, z = attn.memberships(q, k)
    valid = torch.ones(2, 40, dtype=torch.bool, device="cuda")
    b, h, i, j = sbm.fastrg_edges(yb.detach(), z.detach(), valid, causal)
    assert b.device.type == "cuda" and (not causal or bool((j <= i).all()))


@pytest.mark.parametrize("name", CAUSAL)
def test_no_causal_leak_on_cuda(name):
    attn = make(name, causal=True).eval().cuda()
    q, k, v = (t.cuda() for t in qkv(37))
    base = attn(q, k, v)
    for t in (5, 20, 36):
        changed = [x.clone() for x in (q, k, v)]
        for x in changed:
            x[:, :, t + 1 :] = torch.randn_like(x[:, :, t + 1 :])
        torch.testing.assert_close(attn(*changed)[:, :, : t + 1], base[:, :, : t + 1], rtol=0, atol=1e-5)


def test_trial_on_cuda_checkpoints_and_resumes(tmp_path):
    from harness.trainer import run_trial

    config = sort_trial(
        dict(steps=16, eval_every=4, checkpoint_every=4, select="best"), dropout=0.1
    )  # dropout: the resume must restore the CUDA generator too

    def crash_at_12(report):
        if report["step"] == 12:
            raise Crash()

    reference = run_trial(config)
    assert reference.device == "cuda" and torch.distributed.get_backend() == "nccl"
    with pytest.raises(Crash):
        run_trial(config, checkpoints=str(tmp_path / "ck"), progress=crash_at_12)
    resumed = run_trial(config, checkpoints=str(tmp_path / "ck"))
    assert resumed.resumed_from_step == 8
    got, want = resumed.final(), reference.final()
    exact = got == want
    print(f"CUDA resume bit-exact: {exact}; largest difference {max(abs(got[k] - want[k]) for k in want):.3g}")
    assert got == pytest.approx(want, rel=2e-2, abs=2e-2)


@pytest.mark.parametrize("name", ["sinkhorn", "local"])
def test_compiled_lm_matches_eager_on_cuda(name, monkeypatch):
    """``train.compile`` on the GPU, where it pays: the compiled causal LM gives the eager loss and gradients (fp32;
    torch's own random numbers, so the same Gumbel noise)."""
    import torch._inductor.config

    from harness.model import ModelConfig, Transformer, compile_in_place

    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    cfg = ModelConfig(
        kind="lm", vocab_size=64, max_len=256, attention=name, attention_params={"block_size": 32}, dim=64, heads=2
    )
    torch.manual_seed(0)
    eager = Transformer(cfg).cuda().train()
    torch.manual_seed(0)
    compiled = compile_in_place(Transformer(cfg).cuda().train())
    tokens = torch.randint(2, 64, (2, 257), generator=torch.Generator().manual_seed(0)).cuda()
    batch = {"tokens": tokens, "mask": torch.ones_like(tokens, dtype=torch.bool)}
    losses = []
    for model in (eager, compiled):
        torch.manual_seed(1)
        losses.append(model(batch))
        losses[-1].backward()
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=0)
    scale = max(p.grad.abs().max().item() for p in eager.parameters())
    for (pname, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-4 * scale, msg=lambda m, n=pname: f"{n}: {m}")


def test_compiled_trial_trains_on_cuda_in_bf16_over_nccl():
    from harness.running.trainer import run_trial

    config = sort_trial(dict(steps=12, compile=True))
    result = run_trial(config)
    assert result.device == "cuda" and torch.distributed.get_backend() == "nccl"
    assert all(torch.isfinite(torch.tensor(v)) for v in result.final().values())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length,block", [(256, 32), (320, 64)])  # 320: no multiple of FlexAttention's 128 tiles
def test_flex_path_matches_the_batched_path_on_cuda(causal, length, block, monkeypatch):
    """sinkhorn's GPU path (one FlexAttention call) against its batched path: outputs and every gradient (q, k, v
    and the sort net's) in fp32 in training mode (same Gumbel noise), and within bf16 rounding in bf16."""
    from attentions.sinkhorn import flex

    def run(use_flex: bool, dtype: torch.dtype):
        monkeypatch.setattr(flex, "enabled", lambda x: use_flex)
        torch.manual_seed(0)
        attn = attentions.build("sinkhorn", heads=2, head_dim=32, max_len=length, causal=causal, block_size=block)
        attn = attn.train().cuda().to(dtype)
        g = torch.Generator().manual_seed(1)
        q, k, v = (torch.randn(2, 2, length, 32, generator=g).cuda().to(dtype).requires_grad_() for _ in range(3))
        torch.manual_seed(2)
        out = attn(q, k, v)
        out.float().square().mean().backward()
        grads = [t.grad.float() for t in (q, k, v)] + [p.grad.float() for p in attn.parameters()]
        return out.float(), grads

    out, grads = run(False, torch.float32)
    got, got_grads = run(True, torch.float32)
    torch.testing.assert_close(got, out, rtol=1e-4, atol=1e-5)
    for a, b in zip(got_grads, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item() + 1e-7)
    low, _ = run(True, torch.bfloat16)
    assert (low - out).abs().max() <= 0.05 * out.abs().max() + 0.02


@pytest.mark.parametrize("name", ["vanilla", "local"])
def test_a_training_step_with_masks_decided_on_the_host_makes_no_host_sync(name):
    """With ``dense_masks`` of the host batch, forward and backward of the LM queue their kernels without waiting
    for the GPU (``torch.cuda.set_sync_debug_mode("error")`` raises on any synchronizing call)."""
    from harness.model import ModelConfig, Transformer, dense_masks

    cfg = ModelConfig(kind="lm", vocab_size=64, max_len=256, attention=name,
                      attention_params={"block_size": 32} if name == "local" else {}, dim=64, heads=2)  # fmt: skip
    model = Transformer(cfg).cuda().train()
    tokens = torch.randint(2, 64, (2, 257), generator=torch.Generator().manual_seed(0))
    host = {"tokens": tokens, "mask": torch.ones_like(tokens, dtype=torch.bool)}
    dense = dense_masks(host)
    batch = {key: value.cuda() for key, value in host.items()}
    model(batch, dense=dense).backward()  # warm-up: allocations, kernel choice
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        model(batch, dense=dense).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_reduce_overhead_lm_matches_eager_on_cuda(monkeypatch):
    """``train.compile: reduce-overhead`` (CUDA graphs): the replayed steps give the eager loss (fp32)."""
    import torch._inductor.config

    from harness.model import ModelConfig, Transformer, compile_in_place, dense_masks

    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    cfg = ModelConfig(kind="lm", vocab_size=64, max_len=256, attention="local", attention_params={"block_size": 32},
                      dim=64, heads=2)  # fmt: skip
    torch.manual_seed(0)
    eager = Transformer(cfg).cuda().train()
    torch.manual_seed(0)
    graphs = compile_in_place(Transformer(cfg).cuda().train(), "reduce-overhead")
    tokens = torch.randint(2, 64, (2, 257), generator=torch.Generator().manual_seed(0))
    host = {"tokens": tokens, "mask": torch.ones_like(tokens, dtype=torch.bool)}
    batch, dense = {key: value.cuda() for key, value in host.items()}, dense_masks(host)
    want = eager(batch, dense=dense).item()
    for _ in range(3):  # warm-up, recording, replay
        torch.compiler.cudagraph_mark_step_begin()
        got = graphs(batch, dense=dense)
        got.backward()
    assert got.item() == pytest.approx(want, rel=1e-4)
