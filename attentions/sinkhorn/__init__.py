"""The Sparse Sinkhorn Attention family (``sinkhorn``, ``sortcut``, ``sinkhorn_mixture``) as one package: the plugins,
their operator references and the kernels that run them, side by side, so that which path runs where is in the names.

| module | what | runs on |
| --- | --- | --- |
| ``plugins`` | the three registered plugins | any device |
| ``sortnet`` | per-head sorting network (Table 8), Gumbel noise | any device |
| ``balancing`` | ``log_sinkhorn``: picks one of the four below | any device |
| ``cpu`` | ``log_sinkhorn`` in the C++ kernel (``csrc/log_sinkhorn.cpp``) | CPU |
| ``triton_balancing`` | ``log_sinkhorn`` as two Triton kernels (n <= 128) | CUDA; the CPU tests interpret it |
| ``triton_tiled_balancing`` | the same in tiles, for 128 < n <= 4096 | CUDA; the CPU tests interpret it |
| ``reference`` | ``log_sinkhorn`` in torch operators: the oracle, and the fallback | any device |
| ``block_attention`` | sort-and-attend step, hand-written backward | CPU: C++ kernel; elsewhere: batched products |
| ``flex`` | sort-and-attend step as one FlexAttention call | CUDA, unpadded inputs |
| ``sort_stats`` | how far a learned sort is from trivial | any device |

The CPU kernels (``csrc/log_sinkhorn.cpp``, ``csrc/sinkhorn_block.cpp``) are built by ``attentions._fused_cpu``
(``ATTNBENCH_FUSED_CPU=0`` turns them off, ``ATTNBENCH_TRITON_CUDA=0`` the Triton kernels, ``ATTNBENCH_FLEX_CUDA=0``
the FlexAttention path); CUDA matrices above 4096 and other devices balance in operators; ``sinkformer`` balances
with this package's ``log_sinkhorn`` too.
"""

from attentions.sinkhorn.plugins import (
    SinkhornAttention,
    SinkhornMixtureAttention,
    SortCutAttention,
    sort_blocks,
    sorted_slot_valid,
    unbalanced_sort,
)

__all__ = [
    "SinkhornAttention",
    "SinkhornMixtureAttention",
    "SortCutAttention",
    "sort_blocks",
    "sorted_slot_valid",
    "unbalanced_sort",
]
