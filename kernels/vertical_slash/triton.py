"""Vertical-slash attention on the project's Triton kernel: the index build of naive.py (vectorised torch, no host
synchronisation) feeding `block_sparse_attn_triton`, which walks the 64x64 key blocks and then gathers the extra
columns token by token in the same online softmax."""
from __future__ import annotations

import torch

from ..block_sparse_attn.triton import block_sparse_attn_triton
from .naive import vertical_slash_to_blocks

__all__ = ["vertical_slash_attn_triton"]


def vertical_slash_attn_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, v_idx: torch.Tensor,
                               s_idx: torch.Tensor, block_size: int = 64, scale: float | None = None,
                               return_lse: bool = False):
    """Same result as `vertical_slash_attn_naive` (q `[B, H, T, D]`, k / v `[B, HKV, S, D]`, HS in {H, HKV, 1})."""
    T, S = q.shape[2], k.shape[2]
    idx, cnt, cols, ccnt = vertical_slash_to_blocks(v_idx, s_idx, T, S, block_size)
    return block_sparse_attn_triton(q, k, v, idx, cnt, block_size, block_size, scale=scale, extra_cols=cols,
                                    extra_counts=ccnt, return_lse=return_lse)
