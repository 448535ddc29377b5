"""Reference semantics of `kernels/row_rank`: torch's stable descending sort and PBS-Attn's cumulative-mass rule.

`desc_order_naive(x)`: per row of `x [..., N]`, the indices of a stable descending sort (equal values: lower index
first). `mass_prefix_naive(probs, threshold)`: per row, the minimal set of the highest entries (NaN read as 0, ties
to the lower index) whose running sum in that order reaches `threshold`, the crossing entry included; a row that
never reaches it keeps nothing (PBS-Attn, Wang et al., 2025, arXiv:2510.21270, `pbs_attn/src/pbs.py`).
"""
from __future__ import annotations

import torch


def desc_order_naive(x: torch.Tensor) -> torch.Tensor:
    """int64 `[..., N]`: the stable descending order of each row."""
    return torch.sort(x, dim=-1, descending=True, stable=True).indices


def mass_prefix_naive(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """bool like `probs [..., N]` (fp32): the entries of each row's minimal descending prefix reaching `threshold`."""
    probs = torch.nan_to_num(probs, nan=0.0)
    srt, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    reached = srt.cumsum(-1) >= threshold
    first = reached.int().argmax(-1, keepdim=True)
    ramp = torch.arange(probs.shape[-1], device=probs.device)
    keep_sorted = (ramp <= first) & reached.any(-1, keepdim=True)
    return torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
