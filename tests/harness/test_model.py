"""The shared Transformer: identical surroundings for every plugin, each head works."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.model import ModelConfig, Transformer, compile_in_place


def config(kind: str, attention: str = "vanilla", **kw) -> ModelConfig:
    params = {"block_size": 4} if attention in ("local", "sparse") else {}
    return ModelConfig(
        kind=kind,
        vocab_size=12,
        max_len=32,
        attention=attention,
        attention_params=params,
        num_classes=3 if kind == "classify" else 0,
        layers=2,
        dim=32,
        heads=4,
        mlp_dim=64,
        **kw,
    )


def test_parameter_free_plugins_get_identical_surroundings():
    counts = {name: Transformer(config("seq2seq", name)).num_parameters() for name in ("vanilla", "local", "sparse")}
    assert len(set(counts.values())) == 1, counts


def test_lm_is_causal_end_to_end():
    torch.manual_seed(0)
    model = Transformer(config("lm", "local")).eval()
    tokens = torch.randint(2, 12, (2, 20))
    mask = torch.ones_like(tokens, dtype=torch.bool)
    logits = model.decode(tokens, mask)
    changed = tokens.clone()
    changed[:, 12:] = (changed[:, 12:] + 3) % 10 + 2
    torch.testing.assert_close(model.decode(changed, mask)[:, :12], logits[:, :12])


def test_classifier_ignores_padding_and_seq2seq_generates():
    torch.manual_seed(0)
    model = Transformer(config("classify", "sparse")).eval()
    tokens = torch.randint(2, 12, (2, 16))
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, 10:] = False
    batch = {"tokens": tokens, "mask": mask, "label": torch.tensor([0, 2])}
    logits = model.predictions(batch)[0]
    other = dict(batch, tokens=torch.where(mask, tokens, torch.randint(2, 12, tokens.shape)))
    torch.testing.assert_close(model.predictions(other)[0], logits)

    seq = Transformer(config("seq2seq", "local")).eval()
    out = seq.generate(tokens, torch.ones_like(mask), 7)
    assert out.shape == (2, 7) and (out >= 2).all()


def test_tie_kv_shares_one_projection():
    model = Transformer(config("lm", "vanilla", tie_kv=True))
    layer = model.decoder[0].attn
    assert layer.k is layer.v
    untied = Transformer(config("lm", "vanilla"))
    assert untied.num_parameters() - model.num_parameters() == 2 * (32 * 32 + 32)


def test_a_mask_that_hides_nothing_reaches_no_plugin_and_changes_no_loss():
    """LM batches are full windows: their all-True mask is passed as None (vanilla then takes SDPA's fused causal
    kernel, block plugins skip their masking), and the loss is the same mean over every target. A mask that hides
    something still reaches the plugin and still selects the targets."""
    torch.manual_seed(0)
    model = Transformer(config("lm", "local")).eval()
    seen = []
    attention = model.decoder[0].attn.attn
    original = attention.forward
    attention.forward = lambda q, k, v, padding_mask=None: seen.append(padding_mask) or original(q, k, v, padding_mask)
    tokens = torch.randint(2, 12, (2, 21))
    full = {"tokens": tokens, "mask": torch.ones_like(tokens, dtype=torch.bool)}
    loss = model(full)
    assert seen == [None]
    logits, targets = model.decode(tokens[:, :-1], None), tokens[:, 1:]
    every = full["mask"][:, 1:]  # the gather the general path does, here selecting every target
    expected = torch.nn.functional.cross_entropy(logits[every], targets[every])
    torch.testing.assert_close(loss, expected)

    padded = dict(full, mask=full["mask"].clone())
    padded["mask"][1, 15:] = False
    seen.clear()
    loss = model(padded)
    assert seen[0] is not None and not seen[0].all()
    targets = padded["mask"][:, 1:]
    expected = torch.nn.functional.cross_entropy(
        model.decode(tokens[:, :-1], padded["mask"][:, :-1])[targets], tokens[:, 1:][targets]
    )
    torch.testing.assert_close(loss, expected)


@pytest.mark.slow
def test_compiled_model_gives_the_eager_loss_and_gradients(monkeypatch):
    """``train.compile`` / ``bench --model --compile``: the compiled causal sinkhorn LM (the CPU kernels run eagerly
    inside it, the rest is compiled) trains like the eager one, and its state_dict keys are the plain module's."""
    import torch._inductor.config

    # Compiled code draws its random numbers (the Gumbel noise) from its own generator unless told to call torch's.
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    cfg = dataclasses.replace(config("lm", "sinkhorn"), attention_params={"block_size": 8})
    torch.manual_seed(0)
    eager = Transformer(cfg).train().double()  # float64 but for the loss, which the model takes in float32
    torch.manual_seed(0)
    compiled = compile_in_place(Transformer(cfg).train().double())
    assert list(compiled.state_dict()) == list(eager.state_dict())
    torch._dynamo.reset()
    tokens = torch.randint(2, 12, (2, 33), generator=torch.Generator().manual_seed(0))
    batch = {"tokens": tokens, "mask": torch.ones_like(tokens, dtype=torch.bool)}
    losses = []
    for model in (eager, compiled):
        torch.manual_seed(1)  # the same Gumbel noise
        losses.append(model(batch))
        losses[-1].backward()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # it was compiled, around the kernels' breaks
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=0)
    # The loss is taken in float32 (harness.model), so gradients agree to float32's rounding, on the scale of the
    # largest one (some are 0 in exact arithmetic, such as the key biases under softmax).
    scale = max(p.grad.abs().max().item() for p in eager.parameters())
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6 * scale, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("kind", ["lm", "classify", "seq2seq"])
def test_masks_decided_on_the_host_give_the_same_loss_without_reading_a_mask(kind, monkeypatch):
    """``forward(batch, dense=dense_masks(host_batch))`` never reads a mask's values (on a GPU, a host sync) and
    gives the loss of the model that checks each mask itself, with and without padding."""
    import harness.model as model_module
    from harness.model import dense_masks

    torch.manual_seed(0)
    model = Transformer(config(kind, "local")).train()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, 12, (2, 17), generator=g)
    full = torch.ones_like(tokens, dtype=torch.bool)
    padded = full.clone()
    padded[1, 12:] = False
    for mask in (full, padded):
        if kind == "seq2seq":
            batch = {"src": tokens, "src_mask": mask, "tgt": tokens.flip(1), "tgt_mask": full}
        else:
            batch = {"tokens": tokens, "mask": mask, "label": torch.tensor([0, 2])}
        dense = dense_masks(batch)
        assert dense == {key for key, value in batch.items() if key.endswith("mask") and bool(value.all())}
        torch.manual_seed(1)
        checked = model(batch)
        monkeypatch.setattr(model_module, "padding_or_none", lambda m: pytest.fail("read a mask's values"))
        torch.manual_seed(1)
        decided = model(batch, dense=dense)
        monkeypatch.undo()
        assert torch.equal(decided, checked)


def test_a_mask_decided_dense_reaches_the_plugin_as_none_and_a_padded_one_as_itself(monkeypatch):
    from attentions.local import LocalAttention
    from harness.model import dense_masks

    received = []
    real = LocalAttention.forward
    monkeypatch.setattr(
        LocalAttention, "forward", lambda self, q, k, v, padding_mask=None: received.append(padding_mask)
        or real(self, q, k, v, padding_mask)
    )  # fmt: skip
    model = Transformer(config("classify", "local"))
    tokens = torch.randint(2, 12, (2, 16))
    full = torch.ones_like(tokens, dtype=torch.bool)
    model({"tokens": tokens, "mask": full, "label": torch.tensor([0, 1])}, dense=dense_masks({"mask": full}))
    assert received == [None, None]  # both layers
    padded = full.clone()
    padded[0, 10:] = False
    received.clear()
    model({"tokens": tokens, "mask": padded, "label": torch.tensor([0, 1])}, dense=dense_masks({"mask": padded}))
    assert len(received) == 2 and all(m is padded for m in received)
