"""The registry: keyword discovery through **kwargs forwarding, and its checks."""

from __future__ import annotations

import pytest

import attentions
import tasks


def test_a_subclass_forwarding_kwargs_takes_its_parents_keywords():
    sortcut = attentions.parameters("sortcut")
    assert list(sortcut) == [*attentions.parameters("sinkhorn"), "budget"]
    assert sortcut["block_size"].annotation is int and sortcut["budget"].default == 2
    assert list(attentions.parameters("sinkhorn_mixture")) == list(attentions.parameters("sinkhorn"))
    assert "vocab_size" in tasks.parameters("lm_subword") and "vocab_size" not in tasks.parameters("lm_char")
    assert "num_classes" in tasks.parameters("classify") and "num_classes" not in tasks.parameters("nli")


def test_forwarded_keywords_are_checked_before_construction():
    with pytest.raises(ValueError, match="attention 'sortcut' has no parameter 'blok_size'; did you mean 'block_size'"):
        attentions.build("sortcut", heads=2, head_dim=8, max_len=64, blok_size=8)
    with pytest.raises(ValueError, match="block_size must be a positive int, got 0"):
        attentions.build("sinkhorn_mixture", heads=2, head_dim=8, max_len=64, block_size=0)
    with pytest.raises(ValueError, match="task 'nli' has no parameter 'num_classes'"):
        tasks.build("nli", num_classes=4)


@pytest.mark.parametrize("field", ["length", "symbols", "train_size"])
@pytest.mark.parametrize("value", [0, -3, True, 2.5])
def test_sort_rejects_bad_sizes_instead_of_defaulting(field, value):
    with pytest.raises(ValueError, match=f"task 'sort': {field} must be a positive int"):
        tasks.build("sort", **{field: value})
