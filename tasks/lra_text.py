"""Long Range Arena's byte-level text classification (Tay et al. 2021, "Text"): IMDb reviews as UTF-8 bytes.

Each review is read byte by byte (token = byte + 2) and truncated to 4,000 bytes, the length LRA's paper gives as 4K
(its retrieval config, ``lra_benchmarks/matching/configs/base_match_config.py``, writes ``max_length = 4000``; the
text config ``text_classification/configs/base_tc_config.py`` carries 1000, which its paper runs override). Binary
sentiment, accuracy. LRA's model (``base_tc_config.py``): 4 layers, 256 wide, 4 heads, MLP 1024.

Data (the same readers as ``classify``): ``hf:stanfordnlp/imdb`` (``text``, ``label``), an ``aclImdb`` folder, or the
embedded passage-topic default (offline; see ``tasks.classify``). LRA validates on IMDb's test split (IMDb has no
other); here ``val`` is carved from training (``tasks._labelled.carve_val``) so that test stays unseen.
"""

from __future__ import annotations

from tasks.base import ModelSize, register_task
from tasks.classify import DocumentClassificationTask

LRA_TEXT = ModelSize(layers=4, dim=256, heads=4, mlp_dim=1024, dropout=0.1)
SETTINGS = {
    "smoke": {"char": (512, None), "eval": 128, "model": ModelSize(layers=1, dim=32, heads=2, mlp_dim=64)},
    "small": {"char": (1000, None), "eval": 2_000, "model": ModelSize(layers=2, dim=128, heads=4, mlp_dim=512)},
    "paper": {"char": (4000, None), "eval": None, "model": LRA_TEXT},
}


@register_task("lra_text")
class LRATextTask(DocumentClassificationTask):
    """Parameters: ``data`` (``hf:ID`` or an ``aclImdb`` folder; None = embedded passages), ``max_tokens`` (bytes;
    paper 4000), ``eval_examples`` (cap per split). Unset parameters take the scale's values."""

    SETTINGS = SETTINGS

    def __init__(
        self,
        *,
        scale: str = "smoke",
        seed: int = 0,
        data: str | None = None,
        max_tokens: int | None = None,
        eval_examples: int | None = None,
    ):
        super().__init__(
            scale=scale, seed=seed, data=data, level="char", max_tokens=max_tokens, eval_examples=eval_examples
        )
