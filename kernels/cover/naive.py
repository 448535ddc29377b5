"""Reference semantics of `kernels/cover` (FlexPrefill, arXiv:2502.20766, `methods/flexprefill.py` steps 3 and 7).

Per row of fp32 `x [R, N]` (non-negative scores), sorted in descending order by a stable sort (equal values: lower
index first) with running sums S_1 <= S_2 <= ... taken in that order:

* `cover_count_naive(x, target)`: int64 `[R]`, the number of running sums <= target, plus one (the official token
  budget before its block conversion).
* `cover_mask_naive(x, target, cols)`: bool like `x`, the entries whose running sum is <= target, with each row read
  as a flattened `[rows, cols]` matrix of which only the lower triangle (column <= row) takes part: the other entries
  are neither sorted nor kept (the official global cover of the query-aware block scores, on its causal support).

Running sums are fp32, added one by one in sorted order (torch.cumsum on the CPU).
"""
from __future__ import annotations

import torch


def _check(x: torch.Tensor, target: float) -> None:
    if x.dim() != 2 or x.dtype != torch.float32:
        raise ValueError(f"x must be a 2-D fp32 tensor [R, N]; got {tuple(x.shape)} {x.dtype}")
    if not isinstance(target, (int, float)) or isinstance(target, bool):
        raise ValueError(f"target={target!r} must be a number")


def _check_cols(x: torch.Tensor, cols: int) -> None:
    if cols < 1 or x.shape[1] % cols:
        raise ValueError(f"cols={cols} must divide the row length {x.shape[1]}")


def cover_count_naive(x: torch.Tensor, target: float) -> torch.Tensor:
    """int64 `[R]`: #(descending running sums <= target) + 1 per row."""
    _check(x, target)
    srt = torch.sort(x, dim=-1, descending=True, stable=True).values
    return (torch.cumsum(srt, dim=-1) <= target).sum(-1) + 1


def cover_mask_naive(x: torch.Tensor, target: float, cols: int) -> torch.Tensor:
    """bool like `x`: the lower-triangle entries kept by the descending cover (module docstring)."""
    _check(x, target)
    _check_cols(x, cols)
    idx = torch.arange(x.shape[1], device=x.device)
    support = idx[(idx % cols) <= (idx // cols)]
    vals, order = torch.sort(x[:, support], dim=-1, descending=True, stable=True)
    kept = torch.cumsum(vals, dim=-1) <= target
    out = torch.zeros_like(x, dtype=torch.bool)
    return out.index_put_((torch.arange(x.shape[0])[:, None].expand_as(order), support[order]), kept)
