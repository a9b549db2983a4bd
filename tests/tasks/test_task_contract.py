"""Every task family: registered, cheap to construct, batches a pure function of (seed, step), one smoke trial each.

The smoke trials run the real trainer (DeepSpeed on CPU) for a few steps on each task's embedded default data and
check that every headline metric comes back finite and consistent with the loss (bpc/bpd = loss / ln 2, perplexity =
exp(loss), accuracy in [0, 1]).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import tasks
from harness.running.grid import Trial
from harness.running.trainer import run_trial

FAMILIES = {  # name -> task parameters of its smoke trial
    "lm_char": {},
    "lm_subword": {},
    "image_gen": {},
    "classify": {"level": "char"},
    "nli": {},
    "listops": {},
    "lra_text": {},
    "lra_image": {},
    "lra_retrieval": {},
    "pathfinder": {},
}


def test_every_family_is_registered():
    assert set(FAMILIES) | {"sort"} <= set(tasks.names())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_train_batches_are_a_pure_function_of_seed_and_step(name):
    a, b, other = (tasks.build(name, seed=s) for s in (0, 0, 1))
    for task in (a, b, other):
        task.prepare()
    first, again = a.train_batch(8, step=5), b.train_batch(8, step=5)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["tokens"], a.train_batch(8, step=6)["tokens"])
    assert not torch.equal(first["tokens"], other.train_batch(8, step=5)["tokens"])
    spec = a.spec
    expected = {"lm": {"tokens", "mask"}, "classify": {"tokens", "mask", "label"}}[spec.kind]
    if spec.towers == 2:
        expected = expected | {"pair_tokens", "pair_mask"}
    assert set(first) == expected and first["tokens"].dtype == torch.long and first["mask"].dtype == torch.bool
    model_len = first["tokens"].shape[1] - (1 if spec.kind == "lm" else 0)  # lm: the model reads tokens[:, :-1]
    assert model_len <= spec.max_len and int(first["tokens"].max()) < spec.vocab_size
    for batch in a.eval_splits(16).values():
        sample = next(iter(batch))
        assert sample["tokens"].shape[1] - (1 if spec.kind == "lm" else 0) <= spec.max_len


def smoke_trial(name: str, params: dict, steps: int = 8) -> dict:
    spec = tasks.build(name, **params).spec
    train = dict(
        steps=steps, batch_size=8, lr=3e-3, warmup=0, weight_decay=0.0, grad_clip=1.0, eval_batch_size=64, deepspeed={}
    )
    return Trial(
        grid="t",
        task=name,
        task_params=params,
        scale="smoke",
        seed=0,
        attention="local",
        params={"block_size": 16},
        model=dataclasses.asdict(spec.model),
        train=train,
        resources=dict(cpus=1, gpus=0, workers=1, max_retries=0),
    ).config()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_one_smoke_trial_per_task(name):
    result = run_trial(smoke_trial(name, FAMILIES[name]))
    metrics = result.final()
    spec = tasks.build(name).spec
    splits = {split for split, _ in metrics} - {"train"}
    assert splits and all(math.isfinite(v) for v in metrics.values())
    for split in splits:
        loss = metrics[(split, "loss")]
        for metric in spec.metrics:
            value = metrics[(split, metric)]
            if metric in ("bpc", "bpd"):
                assert value == pytest.approx(loss / math.log(2))
            elif metric == "perplexity":
                assert value == pytest.approx(math.exp(loss))
            else:
                assert 0 <= value <= 1
    if spec.kind == "lm":  # 8 steps already beat a uniform guess over the vocabulary
        assert metrics[("test", "loss")] < math.log(spec.vocab_size)
